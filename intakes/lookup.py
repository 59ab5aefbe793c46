"""The hot read of every trigger and poll: the API key (with its org, user and team), the
URL's intake, its workflow and the key's access check in one hand-written SELECT
(auxot/rawsql.py, key_intake_lookup); the ORM spends ~2 ms of Python building the
equivalent queries with their EXISTS subqueries, this ~0.2 ms.
"""

import functools
import uuid

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Field

from apikeys.models import ApiKey
from auxot import rawsql
from auxot.models import Membership, Organization, Team
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
def _key_intake_plan(vendor: str) -> tuple[str, list]:
    """Params: intake id (or NULL), lookup id. The intake's columns are NULL unless it is
    active, in the key's org, on an active workflow and the key may use it: a team key on
    its team's intakes, a personal key whose owner is a member of the org (and of the
    intake's team, if it has one)."""
    user_model = get_user_model()
    models = [(ApiKey, "k"), (Organization, "o"), (user_model, "u"), (Team, "t"),
              (Intake, "i"), (Workflow, "w")]
    parts = [rawsql.columns(model, alias) for model, alias in models]
    through = rawsql.quote(Membership.teams.through._meta.db_table)
    team = f"'{ApiKey.Kind.TEAM.value}'"  # our own constant, not a value anyone sends
    sql = (
        f"SELECT {', '.join(cols for _fields, cols in parts)}, "
        f"CASE WHEN i.id IS NULL THEN NULL ELSE m.role END "
        f"FROM {rawsql.table(ApiKey)} k "
        f"JOIN {rawsql.table(Organization)} o ON o.id = k.org_id "
        f"LEFT JOIN {rawsql.table(user_model)} u ON u.id = k.user_id "
        f"LEFT JOIN {rawsql.table(Team)} t ON t.id = k.team_id "
        f"LEFT JOIN {rawsql.table(Membership)} m ON m.user_id = k.user_id "
        "AND m.org_id = k.org_id "
        f"LEFT JOIN {rawsql.table(Intake)} i ON i.id = %s AND i.active AND i.org_id = k.org_id "
        f"AND (CASE WHEN k.kind = {team} THEN i.team_id = k.team_id "
        "ELSE m.id IS NOT NULL AND (i.team_id IS NULL OR EXISTS (SELECT 1 FROM "
        f"{through} mt WHERE mt.membership_id = m.id AND mt.team_id = i.team_id)) END) "
        f"LEFT JOIN {rawsql.table(Workflow)} w ON w.id = i.workflow_id AND w.active "
        "WHERE k.lookup_id = %s"
    )
    return sql, [(model, fields) for (model, _alias), (fields, _cols) in zip(
        models, parts, strict=True)]


def key_intake_lookup(*, lookup_id: str, intake_pk: uuid.UUID | None
                      ) -> tuple[ApiKey, Intake | None] | None:
    """The key `lookup_id` (with org, user, team, as apikeys.lookup loads it) and the
    intake `intake_pk` if this key may call it (as intake_lookup finds it), in one SELECT;
    None for an unknown key. The caller still checks the key (digest, revoked, ...)."""
    sql, layout = _key_intake_plan(connection.vendor)
    prep = None if intake_pk is None else Intake._meta.pk.get_db_prep_value(intake_pk, connection)
    row = rawsql.fetch_one(sql, [prep, lookup_id])
    if row is None:
        return None
    key, org, user, team, intake, workflow = rawsql.instances(layout, row)
    key.org, key.user, key.team = org, user, team
    if intake is None or workflow is None:
        return key, None
    intake.workflow, intake.org = workflow, org
    intake.key_role = row[sum(len(fields) for _model, fields in layout)]  # after the models
    return key, intake


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


# --- The grant, checked again by the write ---------------------------------------------
# Every condition the trigger's authorization checks (apikeys.services._refuse_unusable on
# the key, _key_intake_plan on the intake and the access, intakes.services._require_actor
# on the role), as one SQL condition over the rows as they are when a write runs. A write
# that carries it cannot land after a revocation that committed before it
# (tests/intakes/test_revocation_race.py enumerates the conditions from those functions).
ACTOR_ROLES = (Membership.Role.ADMIN.value, Membership.Role.MEMBER.value)


def team_plans() -> tuple[str, ...]:
    """The plans on which team keys work (Organization.has_teams, asked of each plan)."""
    return tuple(plan.value for plan in Organization.Plan if Organization(plan=plan).has_teams)


@functools.cache
def _grant_plan(vendor: str, lock: bool) -> str:
    """Params: intake id, workflow id, key id, now. One row when the key may still act on
    the intake's workflow now, none otherwise. `lock`: FOR SHARE on the key and intake rows
    (PostgreSQL), which a revocation's UPDATE then waits on until our commit, and which
    waits on one in flight and then sees it."""
    user_model = get_user_model()
    through = rawsql.quote(Membership.teams.through._meta.db_table)
    team = f"'{ApiKey.Kind.TEAM.value}'"  # our own constants, not values anyone sends
    plans = ", ".join(f"'{plan}'" for plan in team_plans())
    roles = ", ".join(f"'{role}'" for role in ACTOR_ROLES)
    sql = (
        f"SELECT 1 FROM {rawsql.table(ApiKey)} k "
        f"JOIN {rawsql.table(Organization)} o ON o.id = k.org_id "
        f"JOIN {rawsql.table(Intake)} i ON i.id = %s AND i.org_id = k.org_id AND i.active "
        f"JOIN {rawsql.table(Workflow)} w ON w.id = i.workflow_id AND w.id = %s AND w.active "
        f"LEFT JOIN {rawsql.table(user_model)} u ON u.id = k.user_id "
        f"LEFT JOIN {rawsql.table(Membership)} m ON m.user_id = k.user_id "
        "AND m.org_id = k.org_id "
        "WHERE k.id = %s AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > %s) "
        f"AND (CASE WHEN k.kind = {team} THEN o.plan IN ({plans}) AND i.team_id = k.team_id "
        f"ELSE u.is_active AND m.role IN ({roles}) AND (i.team_id IS NULL OR EXISTS (SELECT 1 "
        f"FROM {through} mt WHERE mt.membership_id = m.id AND mt.team_id = i.team_id)) END)"
    )
    if lock and vendor == "postgresql":
        sql += " FOR SHARE OF k, i"
    return sql


def access_grant(*, key: ApiKey, intake: Intake, now, lock: bool = False) -> tuple[str, list]:
    """The grant's SELECT and its params (see _grant_plan), for a write to carry as
    `WHERE EXISTS (…)` or to run as its transaction's last read."""
    prep = Intake._meta.pk.get_db_prep_value
    params = [prep(intake.pk, connection),
              Workflow._meta.pk.get_db_prep_value(intake.workflow_id, connection),
              ApiKey._meta.pk.get_db_prep_value(key.pk, connection),
              ApiKey._meta.get_field("expires_at").get_db_prep_value(now, connection)]
    return _grant_plan(connection.vendor, lock), params


def access_granted(*, key: ApiKey, intake: Intake, now, lock: bool = False) -> bool:
    sql, params = access_grant(key=key, intake=intake, now=now, lock=lock)
    return rawsql.fetch_one(sql, params) is not None
