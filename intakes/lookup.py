"""The hot read of every trigger and poll: intake, workflow and the key's access check in
one hand-written SELECT (auxot/rawsql.py); the ORM spends ~2 ms of Python building the
equivalent query with its EXISTS subqueries, this ~0.2 ms.
"""

import functools
import uuid

from django.db import connection
from django.db.models import Field

from apikeys.models import ApiKey
from auxot import rawsql
from auxot.models import Membership
from intakes.models import Intake
from workflows.models import Workflow, WorkItem


@functools.cache
def _plan(vendor: str, team_key: bool) -> tuple[str, list[Field], list[Field]]:
    """Params: team key (intake, org, team); personal key (user, intake, org)."""
    intake_fields, intake_cols = rawsql.columns(Intake, "i")
    workflow_fields, workflow_cols = rawsql.columns(Workflow, "w")
    if team_key:
        role, join, access = "NULL", "", "i.team_id = %s"
    else:  # a member of the org (one row at most: one membership per org), and of the
        # intake's team if it has one; the role comes along for the caller's checks
        through = rawsql.quote(Membership.teams.through._meta.db_table)
        role = "m.role"
        join = (f"JOIN {rawsql.table(Membership)} m ON m.user_id = %s AND m.org_id = i.org_id")
        access = (f"(i.team_id IS NULL OR EXISTS (SELECT 1 FROM {through} mt "
                  "WHERE mt.membership_id = m.id AND mt.team_id = i.team_id))")
    sql = (
        f"SELECT {intake_cols}, {workflow_cols}, {role} FROM {rawsql.table(Intake)} i "
        f"JOIN {rawsql.table(Workflow)} w ON w.id = i.workflow_id {join} "
        f"WHERE i.id = %s AND i.active AND i.org_id = %s AND w.active AND {access}"
    )
    return sql, intake_fields, workflow_fields


def intake_lookup(*, pk: uuid.UUID, key: ApiKey) -> Intake | None:
    """The active intake (with its active workflow) `key` may call, or None.

    The intake carries `key_role`: the personal key's owner's role in the organization
    (admin/member/auditor), or None for a team key.
    """
    team_key = key.kind == ApiKey.Kind.TEAM
    sql, intake_fields, workflow_fields = _plan(connection.vendor, team_key)
    intake_pk = Intake._meta.pk.get_db_prep_value(pk, connection)
    params = ([intake_pk, key.org_id, key.team_id] if team_key
              else [key.user_id, intake_pk, key.org_id])
    row = rawsql.fetch_one(sql, params)
    if row is None:
        return None
    split, end = len(intake_fields), len(intake_fields) + len(workflow_fields)
    intake = rawsql.instance(Intake, intake_fields, row[:split])
    intake.workflow = rawsql.instance(Workflow, workflow_fields, row[split:end])
    intake.key_role = row[end]
    return intake


@functools.cache
def _item_plan(vendor: str) -> tuple[str, list[Field]]:
    fields, cols = rawsql.columns(WorkItem, "wi")
    sql = f"SELECT {cols} FROM {rawsql.table(WorkItem)} wi WHERE wi.id = %s AND wi.intake_id = %s"
    return sql, fields


def work_item_lookup(*, pk: uuid.UUID, intake: Intake) -> WorkItem | None:
    """The intake's work item `pk`, its workflow taken from the intake when it is the same."""
    sql, fields = _item_plan(connection.vendor)
    prep = Intake._meta.pk.get_db_prep_value
    row = rawsql.fetch_one(sql, [prep(pk, connection), prep(intake.pk, connection)])
    if row is None:
        return None
    item = rawsql.instance(WorkItem, fields, row)
    if item.workflow_id == intake.workflow_id:
        item.workflow = intake.workflow
    return item
