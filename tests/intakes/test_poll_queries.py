"""The poll in two queries after the key: the item with its intake (and callback delivery,
and a failed item's replays), then the step progress; the diagnosis reads a cached
heartbeat. And the same 200/404 answers as the intake lookup the other endpoints use."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from apikeys.services import apikey_issue
from auxot.models import Membership
from intakes import longpoll
from intakes.lookup import intake_lookup
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow, trigger
from workflows.batch import work_item_process
from workflows.models import Approval, Workflow, WorkItem
from workflows.services import worker_heartbeat

KEY_AND_TWO = 3  # the key (authentication), then the poll's two


def _poll(api, intake, token, work_id, **params):
    return api.get(f"/v1/intake/{intake.pk}/work/{work_id}", params, **bearer(token))


@pytest.fixture(autouse=True)
def _cache_clock_still(monkeypatch):
    """The heartbeat cache's clock held still, so a test's polls never outlive its 2 s TTL
    on a slow box and the query counts below hold (two tests move it on purpose)."""
    from auxot import ttlcache

    monkeypatch.setattr(ttlcache, "time", SimpleNamespace(monotonic=lambda: 1000.0))


@pytest.fixture
def beating(db):
    worker_heartbeat(name="host:1", started_at=timezone.now())


def _running(work_id):
    now = timezone.now()
    WorkItem.objects.filter(pk=work_id).update(status="running", started_at=now,
                                               lease_token="t" * 32,
                                               next_run_at=now + timedelta(seconds=60))


def _waiting(work_id, kind, detail):
    now = timezone.now()
    WorkItem.objects.filter(pk=work_id).update(
        status="running", started_at=now, waiting_on=kind, waiting_since=now,
        waiting_detail=detail, next_run_at=now + timedelta(seconds=5), current_step=1)


def _failed(work_id):
    WorkItem.objects.filter(pk=work_id).update(
        status="failed", finished_at=timezone.now(), next_run_at=None,
        error={"code": "step_failed", "message": "boom", "step": "Greet",
               "step_position": 1})


STATES = {
    "pending": lambda work_id: None,
    "running": _running,
    "delay": lambda work_id: work_item_process(work_id=work_id, drain_seconds=0),
    "approval": lambda work_id: _waiting(work_id, "approval", {"instructions": "look"}),
    "backoff": lambda work_id: _waiting(work_id, "backoff", {
        "reason": "HTTP 503", "attempt": 1, "max_attempts": 3, "until": "soon"}),
    "completed": lambda work_id: WorkItem.objects.filter(pk=work_id).update(
        status="completed", output={"ok": True}, finished_at=timezone.now(), next_run_at=None),
    "failed": _failed,
}


@pytest.mark.parametrize("state", list(STATES))
def test_poll_costs_two_queries_after_the_key(api, intake_a, member_token, beating, state,
                                              django_assert_num_queries):
    work_id = trigger(api, intake_a.pk, member_token, {"customer": "Acme"}).json()["work_id"]
    STATES[state](work_id)
    _poll(api, intake_a, member_token, work_id)  # the heartbeat cache is warm from here on
    with django_assert_num_queries(KEY_AND_TWO):
        response = _poll(api, intake_a, member_token, work_id)
    assert response.status_code == 200
    body = response.json()
    assert [s["name"] for s in body["steps"]] == ["transform 1", "delay 2"]
    assert body["status"] == ("pending" if state == "pending" else
                              state if state in ("completed", "failed") else "running")


def test_the_heartbeat_is_read_once_for_many_polls(api, intake_a, member_token, beating,
                                                   django_assert_num_queries):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    with django_assert_num_queries(5 * KEY_AND_TWO + 1):
        bodies = [_poll(api, intake_a, member_token, work_id).json() for _ in range(5)]
    assert {b["waiting_on"]["kind"] for b in bodies} == {"queue"}


def test_a_heartbeat_this_process_writes_is_seen_at_once(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    assert _poll(api, intake_a, member_token, work_id).json()["waiting_on"]["kind"] == "worker"
    worker_heartbeat(name="host:2", started_at=timezone.now())
    assert _poll(api, intake_a, member_token, work_id).json()["waiting_on"]["kind"] == "queue"


def test_stale_cached_heartbeat_is_reread_after_its_ttl(api, intake_a, member_token,
                                                        monkeypatch):
    from auxot import ttlcache

    clock = [1000.0]
    monkeypatch.setattr(ttlcache.time, "monotonic", lambda: clock[0])
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    assert _poll(api, intake_a, member_token, work_id).json()["waiting_on"]["kind"] == "worker"
    # Another process's beat (written behind this process's back: no cache clear here).
    from workflows.models import WorkerHeartbeat

    WorkerHeartbeat.objects.create(name="other:1", started_at=timezone.now(),
                                   seen_at=timezone.now())
    assert _poll(api, intake_a, member_token, work_id).json()["waiting_on"]["kind"] == "worker"
    clock[0] += 2.5
    assert _poll(api, intake_a, member_token, work_id).json()["waiting_on"]["kind"] == "queue"


def test_failed_item_lists_its_replays_without_another_query(api, intake_a, member_token,
                                                            django_assert_num_queries):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    _failed(work_id)
    original = WorkItem.objects.get(pk=work_id)
    replays = []
    for minutes in (2, 1):  # created out of order: the answer lists them oldest first
        replay = WorkItem.objects.get(pk=trigger(api, intake_a.pk, member_token)
                                      .json()["work_id"])
        WorkItem.objects.filter(pk=replay.pk).update(
            replay_of=original, created_at=timezone.now() - timedelta(minutes=minutes))
        replays.append(str(replay.pk))
    with django_assert_num_queries(KEY_AND_TWO):
        body = _poll(api, intake_a, member_token, work_id).json()
    assert body["replayed_by"] == replays
    assert _poll(api, intake_a, member_token, replays[0]).json()["replay_of"] == work_id


def test_item_started_on_an_earlier_workflow_names_that_one(api, cast, intake_a, member_token,
                                                            django_assert_num_queries):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    other = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Next")
    type(intake_a).objects.filter(pk=intake_a.pk).update(workflow=other)
    _poll(api, intake_a, member_token, work_id)  # the heartbeat cache is warm from here on
    with django_assert_num_queries(KEY_AND_TWO):
        body = _poll(api, intake_a, member_token, work_id).json()
    assert body["workflow"]["name"] == "Greet"
    assert [s["name"] for s in body["steps"]] == ["transform 1", "delay 2"]


def test_retried_and_carried_steps_show_as_before(api, intake_a, member_token):
    """Several attempts of one step: the count, the first start and the last outcome."""
    from workflows.models import Step, StepRun

    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    item = WorkItem.objects.get(pk=work_id)
    first, second = Step.objects.filter(workflow=item.workflow).order_by("position")
    t0 = timezone.now() - timedelta(minutes=5)
    StepRun.objects.create(work_item=item, step=first, attempt=1, status="failed",
                           started_at=t0, finished_at=t0, error={"code": "x"})
    StepRun.objects.create(work_item=item, step=first, attempt=2, status="completed",
                           started_at=t0 + timedelta(minutes=1),
                           finished_at=t0 + timedelta(minutes=2), output={"a": 1})
    StepRun.objects.create(work_item=item, step=second, attempt=1, status="carried",
                           started_at=t0, finished_at=t0,
                           state={"carried_from": {"work_id": work_id, "attempt": 1}})
    steps = _poll(api, intake_a, member_token, work_id).json()["steps"]
    assert steps[0]["attempts"] == 2 and steps[0]["status"] == "completed"
    assert steps[0]["error"] is None and steps[0]["started_at"].startswith(
        t0.strftime("%Y-%m-%dT%H:%M"))
    assert steps[1]["status"] == "carried" and steps[1]["attempts"] == 0
    assert steps[1]["carried_from"]["work_id"] == work_id
    assert steps[1]["carried_from"]["url"].endswith(f"/work/{work_id}")


# --- the long-poll ----------------------------------------------------------------------
def test_long_poll_rereads_once_after_its_wait(api, intake_a, member_token, monkeypatch,
                                               django_assert_num_queries):
    """After the wait: the key again (revoked meanwhile is a 401), then the item."""
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    woke = lambda item_id, seconds, owner=None, org=None, state=None: True  # noqa: E731
    monkeypatch.setattr(longpoll._watcher, "wait", woke)
    _poll(api, intake_a, member_token, work_id)  # the heartbeat cache is warm from here on
    with django_assert_num_queries(KEY_AND_TWO + 2):
        response = _poll(api, intake_a, member_token, work_id, wait=5)
    assert response.status_code == 200 and "Auxot-Wait-Refused" not in response


def test_long_poll_given_its_state_reads_the_progress_once(api, intake_a, member_token,
                                                          monkeypatch, beating,
                                                          django_assert_num_queries):
    """The state counts attempts: the step progress is read before the wait, and the
    answer uses that read when the state already differs (no third query)."""
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    woke = lambda item_id, seconds, owner=None, org=None, state=None: True  # noqa: E731
    monkeypatch.setattr(longpoll._watcher, "wait", woke)
    state = _poll(api, intake_a, member_token, work_id)["Auxot-State"]  # caches warm
    with django_assert_num_queries(KEY_AND_TWO):  # another state: answered at once
        response = _poll(api, intake_a, member_token, work_id, wait=5, state="running.1.-")
    assert response["Auxot-State"] == state
    with django_assert_num_queries(KEY_AND_TWO + 3):  # + progress, then key and item again
        response = _poll(api, intake_a, member_token, work_id, wait=5, state=state)
    assert response.status_code == 200 and response["Auxot-State"] == state


def test_long_poll_over_the_cap_answers_at_once_saying_so(api, intake_a, member_token, settings,
                                                          django_assert_num_queries):
    settings.AUXOT_LONG_POLL_MAX_WAITERS = 0
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    with django_assert_num_queries(KEY_AND_TWO + 1):  # + the heartbeat, read cold here
        response = _poll(api, intake_a, member_token, work_id, wait=20)
    assert response["Auxot-Wait-Refused"] == "busy"
    assert response["Retry-After"] == "1" and response.json()["status"] == "pending"


def test_long_poll_of_a_finished_item_neither_waits_nor_rereads(api, intake_a, member_token,
                                                                monkeypatch,
                                                                django_assert_num_queries):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    STATES["completed"](work_id)
    monkeypatch.setattr(longpoll._watcher, "wait", lambda *a: pytest.fail("waited"))
    with django_assert_num_queries(KEY_AND_TWO):
        response = _poll(api, intake_a, member_token, work_id, wait=20)
    assert response.json()["status"] == "completed" and "Auxot-Wait-Refused" not in response


def test_the_watcher_checks_every_waited_item_in_one_query(api, intake_a, member_token,
                                                           django_assert_num_queries):
    ids = [trigger(api, intake_a.pk, member_token).json()["work_id"] for _ in range(6)]
    STATES["completed"](ids[0])
    _failed(ids[1])
    longpoll._Watcher._states_among(ids)  # the heartbeat cache (one read per 2 s) is warm
    with django_assert_num_queries(1):
        found = longpoll._Watcher._states_among(ids)
    terminal = {str(pk) for pk, state in found.items() if not state.startswith("pending.")}
    assert terminal == set(ids[:2]) and len(found) == 6


# --- the same 200/404 as the intake lookup ------------------------------------------------
def _team_intake(cast):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Team")
    return intake_create(org=cast.org_a, workflow=wf, name="team intake", team=cast.team_a)


CALLERS = {
    "member": lambda cast: apikey_issue(org=cast.org_a, label="m", user=cast.member_a),
    "auditor": lambda cast: apikey_issue(org=cast.org_a, label="a", user=cast.auditor_a),
    "outsider": lambda cast: apikey_issue(org=cast.org_b, label="o", user=cast.outsider_b),
    "team key": lambda cast: apikey_issue(org=cast.org_a, label="t", team=cast.team_a),
    "other team key": lambda cast: apikey_issue(
        org=cast.org_a, label="t2", team=type(cast.team_a).objects.create(org=cast.org_a,
                                                                          name="Other")),
}


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("where", ["open intake", "team intake", "team member",
                                   "inactive intake", "inactive workflow", "other intake"])
def test_poll_answers_as_the_intake_lookup_decides(api, cast, intake_a, caller, where):
    team_intake = _team_intake(cast)
    admin = apikey_issue(org=cast.org_a, label="admin", user=cast.admin_a).token
    Membership.objects.get(user=cast.admin_a, org=cast.org_a).teams.add(cast.team_a)
    intake = team_intake if where in ("team intake", "team member") else intake_a
    work_id = trigger(api, intake.pk, admin).json()["work_id"]
    if where == "team member":
        Membership.objects.get(user=cast.member_a, org=cast.org_a).teams.add(cast.team_a)
    if where == "inactive intake":
        type(intake).objects.filter(pk=intake.pk).update(active=False)
    if where == "inactive workflow":
        Workflow.objects.filter(pk=intake.workflow_id).update(active=False)
    if where == "other intake":
        work_id = trigger(api, team_intake.pk, admin).json()["work_id"]
    issued = CALLERS[caller](cast)
    expected = intake_lookup(pk=intake.pk, key=issued.key) is not None and (
        where != "other intake")
    response = _poll(api, intake, issued.token, work_id)
    assert response.status_code == (200 if expected else 404)
    if not expected:
        unknown = _poll(api, intake, issued.token, "00000000-0000-0000-0000-000000000000")
        assert response.content == unknown.content  # byte-identical, whatever the reason


def test_approval_poll_still_explains_with_the_link(api, intake_a, member_token, beating):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    _waiting(work_id, "approval", {"instructions": "look"})
    assert not Approval.objects.exists()
    body = _poll(api, intake_a, member_token, work_id).json()
    assert body["waiting_on"]["kind"] == "approval"
    assert body["diagnosis"].startswith("Waiting for approval at step 2 'delay 2'")


def test_provider_position_is_read_once_per_cache_period(api, intake_a, member_token, beating,
                                                         monkeypatch, django_assert_num_queries):
    from auxot import ttlcache
    from workflows import presenters

    clock, calls = [5000.0], []
    monkeypatch.setattr(ttlcache.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(presenters, "provider_position", lambda *, work_id, now: calls.append(
        work_id) or {"provider": "p", "limit": 1, "in_flight": 1, "ahead": len(calls)})
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    _waiting(work_id, "provider", {"provider": "p"})
    _poll(api, intake_a, member_token, work_id)
    with django_assert_num_queries(2 * KEY_AND_TWO):
        bodies = [_poll(api, intake_a, member_token, work_id).json() for _ in range(2)]
    assert [b["waiting_on"]["ahead"] for b in bodies] == [1, 1] and len(calls) == 1
    clock[0] += presenters.HEARTBEAT_CACHE_SECONDS + 0.5
    body = _poll(api, intake_a, member_token, work_id).json()
    assert body["waiting_on"]["ahead"] == 2
    assert body["diagnosis"] == ("Provider 'p' is at its concurrency limit (1); 2 items wait "
                                 "ahead of this one.")


def test_a_watcher_that_dies_is_replaced_by_the_next_waiter(monkeypatch, settings, caplog):
    """Only a DatabaseError was caught: any other error ended the watcher thread while it
    stayed named as running, so no waiter of the process was ever woken again (each waited
    out its whole ?wait=)."""
    import uuid

    settings.AUXOT_LONG_POLL_RECHECK_SECONDS = 0.05
    watcher = longpoll._Watcher()
    work_id = uuid.uuid4()
    calls = []

    def states_among(ids):
        calls.append(list(ids))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {work_id: "completed.1.-"}

    monkeypatch.setattr(watcher, "_states_among", states_among)
    assert watcher.wait(work_id, 0.3) is True  # its watcher died: it waited the 0.3 s out
    assert len(calls) == 1 and "long-poll watcher stopped" in caplog.text
    assert watcher.wait(work_id, 30) is True  # a new watcher wakes it
    assert len(calls) == 2
