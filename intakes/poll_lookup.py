"""The poll's first read in one hand-written SELECT (auxot/rawsql.py): the intake with its
workflow and the key's access check (the same rules as intakes/lookup.py), the work item
with its own workflow, its callback delivery, and, for a failed item, the ids of its
replays. The step progress is the poll's second and last query (workflows/lookup.py).

No row means 404 for every reason alike: unknown or inactive intake, another
organization's, a team intake the key may not use, an unknown work id or another intake's.
"""

import functools
import uuid
from dataclasses import dataclass

from django.db import connection
from django.db.models import Field

from apikeys.models import ApiKey
from auxot import rawsql
from auxot.models import Membership
from intakes.models import CallbackDelivery, Intake
from workflows.models import Workflow, WorkItem

_DELIVERY_FIELDS = ("id", "url", "state", "attempts", "next_attempt_at", "last_status")


@dataclass
class PollRead:
    intake: Intake
    item: WorkItem
    delivery: CallbackDelivery | None  # read with the item: None means there is none
    replayed_by: list[str] | None  # a failed item's replays, oldest first; None: not read
    # The item's (steps, attempts) when read already (a long-poll's state check); None: not.
    progress: tuple[list, list] | None = None


@dataclass(frozen=True)
class _Plan:
    sql: str
    intake: list[Field]
    workflow: list[Field]
    item: list[Field]
    item_workflow: list[Field]
    delivery: list[Field]
    replays: bool


def _replays_sql(vendor: str) -> str | None:
    """A failed item's replay ids, oldest first, as one comma-separated string."""
    item, q = rawsql.table(WorkItem), rawsql.quote
    replay_of = q(WorkItem._meta.get_field("replay_of").column)
    created, pk, status = q("created_at"), q("id"), q("status")
    failed = f"wi.{status} = '{WorkItem.Status.FAILED.value}'"
    if vendor == "postgresql":
        return (f"CASE WHEN {failed} THEN (SELECT string_agg(CAST(r.{pk} AS text), ',' "
                f"ORDER BY r.{created}) FROM {item} r WHERE r.{replay_of} = wi.{pk}) END")
    if vendor == "sqlite":
        return (f"CASE WHEN {failed} THEN (SELECT group_concat(x.{pk}, ',') FROM "
                f"(SELECT r.{pk} FROM {item} r WHERE r.{replay_of} = wi.{pk} "
                f"ORDER BY r.{created}) x) END")
    return None  # elsewhere the presenter reads them (one more query, failed items only)


@functools.cache
def _plan(vendor: str, team_key: bool) -> _Plan:
    """Params: team key (item, intake, org, team); personal key (item, user, intake, org)."""
    intake_fields, intake_cols = rawsql.columns(Intake, "i")
    workflow_fields, workflow_cols = rawsql.columns(Workflow, "w")
    item_fields, item_cols = rawsql.columns(WorkItem, "wi")
    item_wf_fields, item_wf_cols = rawsql.columns(Workflow, "iw")
    # In the model's own order: Model.from_db maps a partial row by field order.
    delivery_fields = [f for f in CallbackDelivery._meta.concrete_fields
                       if f.name in _DELIVERY_FIELDS]
    delivery_cols = ", ".join(f"cd.{rawsql.quote(f.column)}" for f in delivery_fields)
    replays = _replays_sql(vendor)
    q = rawsql.quote
    if team_key:
        role, join, access = "NULL", "", "i.team_id = %s"
    else:  # as intakes/lookup.py: a member of the org, and of the intake's team if it has one
        through = q(Membership.teams.through._meta.db_table)
        role = "m.role"
        join = f"JOIN {rawsql.table(Membership)} m ON m.user_id = %s AND m.org_id = i.org_id"
        access = ("(i.team_id IS NULL OR EXISTS (SELECT 1 FROM "
                  f"{through} mt WHERE mt.membership_id = m.id AND mt.team_id = i.team_id))")
    work_item = q(WorkItem._meta.get_field("intake").column)
    sql = (
        f"SELECT {intake_cols}, {workflow_cols}, {role}, {item_cols}, "
        f"{item_wf_cols}, "
        f"{delivery_cols}, {replays or 'NULL'} "
        f"FROM {rawsql.table(WorkItem)} wi "
        f"JOIN {rawsql.table(Intake)} i ON i.id = wi.{work_item} "
        f"JOIN {rawsql.table(Workflow)} w ON w.id = i.workflow_id "
        f"JOIN {rawsql.table(Workflow)} iw ON iw.id = wi.workflow_id {join} "
        f"LEFT JOIN {rawsql.table(CallbackDelivery)} cd ON cd.work_item_id = wi.id "
        f"WHERE wi.id = %s AND i.id = %s AND i.active AND i.org_id = %s AND w.active "
        f"AND {access}"
    )
    return _Plan(sql, intake_fields, workflow_fields, item_fields, item_wf_fields,
                 delivery_fields, replays is not None)


def work_item_poll_lookup(*, intake_pk: uuid.UUID, work_pk: uuid.UUID,
                          key: ApiKey) -> PollRead | None:
    """The intake `key` may call and its work item `work_pk`, in one query; or None."""
    team_key = key.kind == ApiKey.Kind.TEAM
    plan = _plan(connection.vendor, team_key)
    prep = Intake._meta.pk.get_db_prep_value
    intake_pk, work_pk = prep(intake_pk, connection), prep(work_pk, connection)
    params = ([work_pk, intake_pk, key.org_id, key.team_id] if team_key
              else [key.user_id, work_pk, intake_pk, key.org_id])
    row = rawsql.fetch_one(plan.sql, params)
    if row is None:
        return None
    at = 0

    def take(fields: list[Field]) -> tuple:
        nonlocal at
        part, at = row[at:at + len(fields)], at + len(fields)
        return part

    intake = rawsql.instance(Intake, plan.intake, take(plan.intake))
    intake.workflow = rawsql.instance(Workflow, plan.workflow, take(plan.workflow))
    intake.key_role = take([None])[0]
    item = rawsql.instance(WorkItem, plan.item, take(plan.item))
    item_workflow = take(plan.item_workflow)
    # The item keeps the workflow it was started with; usually the intake's own.
    item.workflow = (intake.workflow if item.workflow_id == intake.workflow_id
                     else rawsql.instance(Workflow, plan.item_workflow, item_workflow))
    delivery_row = take(plan.delivery)
    delivery = (None if delivery_row[0] is None
                else rawsql.instance(CallbackDelivery, plan.delivery, delivery_row))
    replays = take([None])[0]
    replayed_by = None
    if plan.replays:
        replayed_by = [str(uuid.UUID(str(pk))) for pk in replays.split(",")] if replays else []
    return PollRead(intake=intake, item=item, delivery=delivery, replayed_by=replayed_by)
