"""Acceptance is linearizable with revocation: once a revocation (a key revoked or expired,
its owner deactivated, demoted or removed, the intake or its workflow deactivated, the
intake moved to another team, the plan downgraded) has committed, no request a key makes
is accepted after it, even one that passed authentication before it.

The class is enumerated from the code: every condition the trigger's authorization checks
(apikeys.services._refuse_unusable's tests, intakes.services._require_actor's, and every
column the key+intake lookup's joins test) must name the scenario that withdraws it, or a
reason it cannot change; a new condition fails test_every_precondition_is_covered until
it has one. Each scenario is then committed by another connection (a thread) between
authentication and the write, and the request must get what a request arriving after it
gets, with nothing written.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import threading
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from apikeys import services as apikey_services
from apikeys.models import ApiKey
from apikeys.services import apikey_issue, apikey_revoke
from auxot.models import AuditLogEntry, Membership, Organization, Team
from intakes import api as intakes_api
from intakes import lookup as intakes_lookup
from intakes import replay as intakes_replay
from intakes import services as intake_services
from intakes import urls as api_urls
from intakes.models import IdempotencyKey, Intake, RateLimitBucket
from intakes.services import intake_access_hold, intake_create, intake_set_active
from tests.conftest import bearer, make_workflow
from workflows.batch import work_item_process
from workflows.models import Workflow, WorkItem
from workflows.services import work_item_create

FIXED = "fixed"  # a condition no action changes once the key or intake exists


# --- What the trigger checks, read from the code ------------------------------------------
def _if_tests(func) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {f"{func.__name__}: {ast.unparse(node.test)}" for node in ast.walk(tree)
            if isinstance(node, ast.If)}


def _lookup_columns() -> set[str]:
    """Every column the key+intake lookup's joins and WHERE test (after its FROM)."""
    sql, _layout = intakes_lookup._key_intake_plan(connection.vendor)
    conditions = sql[sql.index(" FROM "):]
    return {f"lookup: {ref}" for ref in re.findall(r"\b(?:mt|[kowtuimw])\.\w+", conditions)}


def preconditions() -> set[str]:
    return (_if_tests(apikey_services._refuse_unusable)
            | _if_tests(intake_services._require_actor) | _lookup_columns())


COVERAGE = {
    "_refuse_unusable: key.revoked_at is not None": "key_revoked",
    "_refuse_unusable: key.expires_at is not None and key.expires_at <= now": "key_expired",
    "_refuse_unusable: key.user is not None and (not key.user.is_active)": "owner_deactivated",
    "_refuse_unusable: key.kind == ApiKey.Kind.TEAM and (refusal := key.org.teams_refusal())":
        "plan_downgraded",
    "_require_actor: key.kind == ApiKey.Kind.TEAM": FIXED,  # a key's kind
    "_require_actor: role is None": FIXED,  # where the role is read from, not a condition
    "_require_actor: role not in ACTOR_ROLES": "role_demoted",
    "lookup: i.active": "intake_deactivated",
    "lookup: w.active": "workflow_deactivated",
    "lookup: m.id": "membership_removed",
    "lookup: m.user_id": "membership_removed",
    "lookup: m.org_id": "membership_removed",
    "lookup: mt.membership_id": "team_membership_removed",
    "lookup: mt.team_id": "team_membership_removed",
    "lookup: i.team_id": "intake_moved_to_another_team",
    "lookup: k.team_id": "intake_moved_to_another_team",
    "lookup: k.lookup_id": "key_deleted",
    # identities: a key's organization, owner, team and kind, an intake's id, organization
    # and workflow (read-only once created), the joins' own primary keys
    **{f"lookup: {ref}": FIXED for ref in (
        "k.org_id", "k.user_id", "k.kind", "o.id", "u.id", "t.id", "i.id", "i.org_id",
        "i.workflow_id", "w.id")},
}


def test_every_precondition_is_covered():
    assert preconditions() == set(COVERAGE)


def test_every_covered_precondition_has_a_scenario():
    assert {name for name in COVERAGE.values() if name != FIXED} == set(SCENARIOS)


# --- The revocations ----------------------------------------------------------------------
@dataclass
class World:
    cast: object
    key: ApiKey
    token: str
    intake: Intake
    workflow: Workflow
    membership: Membership


def _revoke(w):
    apikey_revoke(key=w.key, revoked_by=w.cast.admin_a)


def _expire(w):
    ApiKey.objects.filter(pk=w.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


def _owner_deactivate(w):
    get_user_model().objects.filter(pk=w.cast.member_a.pk).update(is_active=False)


def _plan_downgrade(w):
    Organization.objects.filter(pk=w.cast.org_a.pk).update(plan=Organization.Plan.PRO)


def _intake_deactivate(w):
    intake_set_active(intake=Intake.objects.get(pk=w.intake.pk), active=False)


def _workflow_deactivate(w):
    Workflow.objects.filter(pk=w.workflow.pk).update(active=False)


def _membership_remove(w):
    Membership.objects.filter(pk=w.membership.pk).delete()


def _demote(w):
    Membership.objects.filter(pk=w.membership.pk).update(role=Membership.Role.AUDITOR)


def _team_membership_remove(w):
    Membership.objects.get(pk=w.membership.pk).teams.remove(w.cast.team_a)


def _intake_move(w):
    other = Team.objects.create(org=w.cast.org_a, name="Elsewhere")
    Intake.objects.filter(pk=w.intake.pk).update(team=other)


def _key_delete(w):
    ApiKey.objects.filter(pk=w.key.pk).delete()


# name -> (key kind, intake on team_a, revocation)
SCENARIOS = {
    "key_revoked": ("user", False, _revoke),
    "key_expired": ("user", False, _expire),
    "owner_deactivated": ("user", False, _owner_deactivate),
    "plan_downgraded": ("team", True, _plan_downgrade),
    "role_demoted": ("user", False, _demote),
    "intake_deactivated": ("user", False, _intake_deactivate),
    "workflow_deactivated": ("team", True, _workflow_deactivate),
    "membership_removed": ("user", False, _membership_remove),
    "team_membership_removed": ("user", True, _team_membership_remove),
    "intake_moved_to_another_team": ("team", True, _intake_move),
    "key_deleted": ("user", False, _key_delete),
}


def _world(cast, kind: str, on_team: bool) -> World:
    workflow = make_workflow(cast.org_a, [("approval", {"instructions": "Sign"}),
                                          ("transform", {"expression": "input"})], name="Raced")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Raced",
                           team=cast.team_a if on_team else None)
    membership = Membership.objects.get(user=cast.member_a, org=cast.org_a)
    if on_team:
        membership.teams.add(cast.team_a)
    issued = (apikey_issue(org=cast.org_a, label="raced", team=cast.team_a) if kind == "team"
              else apikey_issue(org=cast.org_a, label="raced", user=cast.member_a))
    return World(cast, issued.key, issued.token, intake, workflow, membership)


def _committed_elsewhere(fn, *args) -> None:
    """Run `fn` on another connection (a thread of its own), committed when it returns."""
    errors: list[BaseException] = []

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _between(monkeypatch, module, name: str, revoke, world, *, after: bool = False,
             nth: int = 1) -> list:
    """Patch `module.name` so that the revocation commits elsewhere just before its `nth`
    call runs (`after`: just after it). Returns a list that holds True once the revocation
    ran, so a test cannot pass without the race."""
    original, ran, calls = getattr(module, name), [], []

    def hooked(*args, **kwargs):
        calls.append(True)
        due = len(calls) == nth
        if due and not after:
            _committed_elsewhere(revoke, world)
            ran.append(True)
        result = original(*args, **kwargs)
        if due and after:
            _committed_elsewhere(revoke, world)
            ran.append(True)
        return result

    monkeypatch.setattr(module, name, hooked)
    return ran


def _answer(response) -> tuple:
    body = response.json() if response.content else {}
    return response.status_code, body.get("code")


def _trigger(api, world):
    return api.post(f"/v1/intake/{world.intake.pk}", data={"n": 1}, format="json",
                    HTTP_IDEMPOTENCY_KEY="raced-1", **bearer(world.token))


@pytest.fixture
def db_counted_limits(settings):
    settings.AUXOT_RATELIMIT_REDIS_URL = ""
    settings.AUXOT_RATE_LIMIT_KEY = 1000
    settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 10**9
    return settings


# --- The trigger --------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_revocation_between_authentication_and_the_write_refuses_the_trigger(
        transactional_db, cast, api, monkeypatch, db_counted_limits, scenario):
    kind, on_team, revoke = SCENARIOS[scenario]
    world = _world(cast, kind, on_team)
    ran = _between(monkeypatch, intake_services, "work_item_accept_write", revoke, world)
    raced = _trigger(api, world)
    assert ran, "the revocation did not run between authentication and the write"
    assert raced.status_code != 202, scenario
    monkeypatch.undo()
    assert _answer(raced) == _answer(_trigger(api, world))  # as if it had come after
    assert not WorkItem.objects.exists()
    assert not IdempotencyKey.objects.exists()
    assert not AuditLogEntry.objects.filter(event="work_item.accepted").exists()
    assert sum(RateLimitBucket.objects.values_list("count", flat=True)) == 0  # refunded


def test_without_a_revocation_the_hooked_trigger_is_accepted(transactional_db, cast, api,
                                                             monkeypatch, db_counted_limits):
    world = _world(cast, "user", True)
    ran = _between(monkeypatch, intake_services, "work_item_accept_write", lambda w: None,
                   world)
    assert _trigger(api, world).status_code == 202 and ran
    assert WorkItem.objects.count() == IdempotencyKey.objects.count() == 1


def test_the_write_refuses_a_stale_authentication_without_any_request(transactional_db, cast):
    """The grant the write carries reads the rows, never what authentication (or any cache
    of it) saw: a key object read before its revocation is refused at the write."""
    world = _world(cast, "user", False)
    stale = ApiKey.objects.select_related("org", "user", "team").get(pk=world.key.pk)
    _revoke(world)
    intake = intake_services.intake_lookup(pk=world.intake.pk, key=stale)
    with pytest.raises(Exception) as caught:
        intake_services.intake_trigger(intake=intake, key=stale, payload={}, ip=None)
    assert getattr(caught.value, "code", None) == "unauthorized"
    assert not WorkItem.objects.exists()


# --- The other routes a key changes state through -----------------------------------------
def _pending(world):
    return work_item_create(workflow=world.workflow, input={}, intake=world.intake)


def _parked(world):
    item = _pending(world)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.waiting_on == WorkItem.Waiting.APPROVAL
    return item


def _failed(world):
    item = _pending(world)
    WorkItem.objects.filter(pk=item.pk).update(
        status=WorkItem.Status.FAILED, finished_at=timezone.now(), next_run_at=None,
        error={"code": "boom", "message": "down", "step": "approval 1", "step_position": 1})
    return item


# route -> (target, path suffix, body, the view's module (where it reads the item),
#           what the item looks like when nothing happened)
ROUTES = {
    "work-item-approval": (_parked, "/approval", {"decision": "approve"},
                           intakes_api,
                           lambda item: item.waiting_on == WorkItem.Waiting.APPROVAL),
    "work-item-cancel": (_pending, "/cancel", {"reason": "raced"},
                         intakes_api,
                         lambda item: item.status == WorkItem.Status.PENDING),
    "work-item-replay": (_failed, "/replay", {"reason": "raced"},
                         intakes_replay,
                         lambda item: WorkItem.objects.count() == 1),
}


def test_every_writing_route_is_raced():
    from tests.intakes.test_api_audit import _writing_routes

    assert _writing_routes() == set(ROUTES) | {"intake-trigger"}
    assert {name for pattern in api_urls.urlpatterns for name in [pattern.name]} >= set(ROUTES)


# An approval takes a personal key (a team key gets 403 before any race): not raced.
@pytest.mark.parametrize(("scenario", "route"), [
    (scenario, route) for scenario in sorted(SCENARIOS) for route in sorted(ROUTES)
    if not (route == "work-item-approval" and SCENARIOS[scenario][0] == "team")])
def test_a_revocation_before_a_keys_action_commits_refuses_it(
        transactional_db, cast, api, monkeypatch, route, scenario):
    kind, on_team, revoke = SCENARIOS[scenario]
    build, suffix, body, module, untouched = ROUTES[route]
    world = _world(cast, kind, on_team)
    item = build(world)
    # PostgreSQL: the revocation commits on another connection after the action's writes,
    # inside its transaction (the point a check at authentication cannot see). SQLite takes
    # its write lock at BEGIN, so another connection commits just before the transaction
    # (after the item's read: authentication and the intake's access are behind it).
    if connection.vendor == "postgresql":  # after the action's writes, before its last read
        ran = _between(monkeypatch, intake_services, "access_granted", revoke, world, nth=2)
    else:  # just after the item was read, before the action's transaction begins
        ran = _between(monkeypatch, module, "work_item_for_key", revoke, world, after=True)
    path = f"/v1/intake/{world.intake.pk}/work/{item.pk}{suffix}"
    raced = api.post(path, data=body, format="json", **bearer(world.token))
    assert ran
    assert raced.status_code >= 400, (scenario, raced.status_code)
    monkeypatch.undo()
    assert _answer(raced) == _answer(api.post(path, data=body, format="json",
                                              **bearer(world.token)))
    item.refresh_from_db()
    assert untouched(item)


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_revocation_waits_for_an_action_holding_the_grant(transactional_db, cast):
    """The grant's FOR SHARE: a revoke cannot commit while an action that checked it is
    still in its transaction (it waits, here until its lock timeout)."""
    world = _world(cast, "user", False)

    def revoke_quickly():
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '300ms'")
            apikey_revoke(key=world.key)

    with transaction.atomic():
        intake_access_hold(key=world.key, intake=world.intake)
        with pytest.raises(OperationalError):
            _committed_elsewhere(revoke_quickly)
    _committed_elsewhere(revoke_quickly)  # once the action committed, the revoke goes through
    assert ApiKey.objects.get(pk=world.key.pk).revoked_at is not None
