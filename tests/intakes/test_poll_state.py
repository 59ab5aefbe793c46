"""`Auxot-State` covers the poll body: every field the body shows that can change while the
item is not finished is classified (its change changes the state, or it is listed with why
not), the fields are taken from the body itself (a new one fails here until classified),
and a story drives each change and checks the state moves with it. Every way an item can
wait names its reason in the body.

The state is computed once (workflows/presenters.py `poll_state`) for the header, for the
long-poll's first check and for its watcher: each look below checks the watcher gives the
header's token, or a waiter would be woken over and over by a state no answer shows.
"""

import re
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apikeys.services import apikey_issue
from auxot.timefmt import iso
from intakes import longpoll
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow, trigger
from workflows.models import (
    Provider,
    ProviderTicket,
    Step,
    StepRun,
    WorkerHeartbeat,
    WorkItem,
)
from workflows.presenters import ahead_bucket, presenter_caches_clear
from workflows.providers import PROVIDER_AHEAD_SHOWN_MAX
from workflows.services import work_item_decide, worker_heartbeat

# --- what each field of the body is to the state ------------------------------------------
STATE = "state"  # its change (while the item is not finished) changes the state
FIXED = "fixed"  # set when the item is made (or replayed), never changed after
FINISHED = "finished"  # shown or changed only once the item is finished (the status moves)
# Shown but not in the state, and why:
NOT = {
    "workflow.name": "the workflow's name: an admin's rename, not the item's progress",
    "diagnosis": "prose: its ages count seconds (\"Queued for 12 s\"); everything else in it "
                 "explains fields the state covers",
    "waiting_on.in_flight": "slots other items hold: moves with every other item's start and "
                            "end at the provider, not with this item's place",
    "waiting_on.limit": "the provider's concurrency limit: an admin's edit of the provider",
    "waiting_on.ahead": "the place in line: in the state by bucket (ahead_bucket), so a long "
                        "line does not change the state with every ticket",
    "callback": "none, or the block below: whether the item or its intake has a callback URL "
                "(the intake's is an admin's edit)",
    "callback.url": "the intake's default URL when the item has none: an admin's edit",
    "callback.state": "before the item finishes: pending, or disabled by the intake's setting "
                      "(an admin's edit); the delivery itself starts once it finishes",
}
FIELDS = {
    "work_id": FIXED, "intake_id": FIXED, "workflow.id": FIXED, "created_at": FIXED,
    "correlation_id": FIXED, "replay_of": FIXED, "resumed_from_step": FIXED,
    "steps[].position": FIXED, "steps[].name": FIXED, "steps[].kind": FIXED,
    "steps[].carried_from.work_id": FIXED, "steps[].carried_from.attempt": FIXED,
    "steps[].carried_from.url": FIXED,
    "finished_at": FINISHED, "output": FINISHED, "error": FINISHED, "redacted_at": FINISHED,
    "replayed_by": FINISHED, "callback.attempts": FINISHED,
    "callback.next_attempt_at": FINISHED, "callback.last_status": FINISHED,
    "status": STATE, "started_at": STATE,
    "current_step": STATE, "current_step.position": STATE, "current_step.name": STATE,
    "current_step.kind": STATE,
    "waiting_on": STATE, "waiting_on.kind": STATE, "waiting_on.since": STATE,
    "waiting_on.after": STATE, "waiting_on.last_worker_heartbeat": STATE,
    "waiting_on.lease_until": STATE, "waiting_on.step": STATE, "waiting_on.until": STATE,
    "waiting_on.deadline": STATE, "waiting_on.instructions": STATE,
    "waiting_on.approve_url": STATE, "waiting_on.decision": STATE,
    "waiting_on.decided_by": STATE, "waiting_on.decided_at": STATE,
    "waiting_on.provider": STATE, "waiting_on.reason": STATE, "waiting_on.attempt": STATE,
    "waiting_on.max_attempts": STATE,
    "steps[].status": STATE, "steps[].attempts": STATE, "steps[].started_at": STATE,
    "steps[].finished_at": STATE, "steps[].error": STATE, "steps[].next_attempt": STATE,
    "steps[].next_attempt_at": STATE,
    **dict.fromkeys(NOT, "not"),
}
LEAVES = {"output", "error", "steps[].error"}  # JSON values: one field each


def _paths(value, prefix: str = "") -> dict:
    """The body as {path: value}, `steps[0].status` style; a dict or list that is empty (or
    None) is a value of its own path."""
    if prefix in LEAVES or re.sub(r"\[\d+\]", "[]", prefix) in LEAVES:
        return {prefix: value}
    if isinstance(value, dict) and value:
        found = {}
        for key, inner in value.items():
            found.update(_paths(inner, f"{prefix}.{key}" if prefix else key))
        return found
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        found = {}
        for index, inner in enumerate(value):
            found.update(_paths(inner, f"{prefix}[{index}]"))
        return found
    return {prefix: value}


def _kind(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


def _changed(before: dict, after: dict) -> set[str]:
    a, b = _paths(before), _paths(after)
    return {_kind(p) for p in a.keys() | b.keys() if a.get(p, ...) != b.get(p, ...)}


# --- the item's story -----------------------------------------------------------------------
@pytest.fixture
def world(cast):
    workflow = make_workflow(cast.org_a, [
        ("transform", {"expression": "input"}), ("approval", {"instructions": "look"}),
        ("agent", {"provider": "p", "prompt": "'hi'"}), ("delay", {"seconds": 60})],
        name="Story")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Story",
                           created_by=cast.admin_a)
    token = apikey_issue(org=cast.org_a, label="m", user=cast.member_a).token
    return cast, workflow, intake, token


def _beat(fresh: bool) -> None:
    now = timezone.now()
    worker_heartbeat(name="host:1", started_at=now - timedelta(hours=2),
                     now=now if fresh else now - timedelta(hours=1))
    if not fresh:
        WorkerHeartbeat.objects.update(seen_at=now - timedelta(hours=1))


def _look(api, intake, token, work_id) -> tuple[dict, str]:
    presenter_caches_clear()
    response = api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(token))
    assert response.status_code == 200
    state = response["Auxot-State"]
    assert longpoll._STATE.fullmatch(state), state
    pk = uuid.UUID(work_id)
    assert longpoll._Watcher._states_among([pk])[pk] == state  # the watcher agrees
    return response.json(), state


def _at(minutes: float):
    return timezone.now() + timedelta(minutes=minutes)


def _story(world, work_id):
    """(name, change, the state must: "differ" | "same"), in order, each from the last."""
    cast, workflow, _intake, _token = world
    steps = list(Step.objects.filter(workflow=workflow).order_by("position"))
    item = WorkItem.objects.filter(pk=work_id)
    runs = StepRun.objects.filter(work_item_id=work_id)
    provider = Provider.objects.create(org=cast.org_a, name="p", model="m",
                                       base_url="https://llm.example.com/v1",
                                       concurrency_limit=1)

    def run(step, attempt, status, **extra):
        return StepRun.objects.create(work_item_id=work_id, step=step, attempt=attempt,
                                      status=status, started_at=timezone.now(), **extra)

    def claimed():
        item.update(status="running", started_at=timezone.now(), lease_token="a" * 32,
                    next_run_at=_at(60))
        run(steps[0], 1, "running")

    def lease_lapsed():
        _beat(True)
        item.update(next_run_at=_at(-1))

    def taken_over():
        runs.filter(attempt=1).update(status="crashed", finished_at=timezone.now(),
                                      error={"code": "step_crashed", "message": "stopped"})
        run(steps[0], 2, "running")
        item.update(lease_token="b" * 32, next_run_at=_at(60))

    def approval():
        runs.filter(attempt=2).update(status="completed", finished_at=timezone.now(), output={})
        run(steps[1], 1, "waiting", state={"deadline": iso(_at(600)), "instructions": "look"})
        item.update(current_step=1, lease_token="", next_run_at=_at(600), waiting_on="approval",
                    waiting_since=timezone.now(),
                    waiting_detail={"deadline": iso(_at(600)), "instructions": "look"})

    def decided():
        work_item_decide(item=item.get(), decision="approve", user=cast.member_a)

    others = []

    def provider_line():
        runs.filter(step=steps[1]).update(status="completed", finished_at=timezone.now())
        made = WorkItem.objects.bulk_create([WorkItem(workflow=workflow, status="running")
                                             for _ in range(25)])
        others.extend(made)
        early = timezone.now() - timedelta(minutes=5)
        ProviderTicket.objects.bulk_create(
            [ProviderTicket(provider=provider, work_item=other,
                            arrived_at=early + timedelta(seconds=n),
                            granted_at=early if n == 0 else None,
                            lease_until=_at(60) if n == 0 else None)
             for n, other in enumerate(made)])
        ProviderTicket.objects.create(provider=provider, work_item_id=work_id,
                                      arrived_at=timezone.now())
        run(steps[2], 1, "waiting", state={"provider": "p"})
        item.update(current_step=2, lease_token="", next_run_at=_at(60), waiting_on="provider",
                    waiting_since=timezone.now(),
                    waiting_detail={"provider": "p", "limit": 1, "in_flight": 1, "ahead": 24})

    def line_moves_within_bucket():  # 24 ahead -> 23: both "p20"
        ProviderTicket.objects.filter(work_item=others[24]).delete()

    def another_takes_a_slot():  # in flight 1 -> 2, 23 ahead -> 22: still "p20"
        ProviderTicket.objects.filter(work_item=others[1]).update(granted_at=timezone.now(),
                                                                  lease_until=_at(60))

    def line_moves_past_bucket():  # 22 ahead -> 9
        ProviderTicket.objects.filter(work_item__in=others[2:15]).delete()

    def provider_look_due():
        item.update(next_run_at=_at(-1))

    def backoff():
        ProviderTicket.objects.filter(work_item_id=work_id).delete()
        detail = {"retry": True, "code": "provider_error", "reason": "HTTP 503", "attempt": 1,
                  "max_attempts": 3, "until": iso(_at(5))}
        runs.filter(step=steps[2]).update(state=detail)
        item.update(waiting_on="backoff", waiting_detail=detail, next_run_at=_at(5))

    def backoff_over():
        item.update(next_run_at=_at(-1))

    def next_attempt():  # as the engine leaves it: still `backoff` until this one's outcome
        runs.filter(step=steps[2]).update(status="failed", finished_at=timezone.now(),
                                          error={"code": "provider_error", "message": "503"})
        run(steps[2], 2, "running")
        item.update(lease_token="c" * 32, next_run_at=_at(60))

    def delay():
        runs.filter(step=steps[2], attempt=2).update(status="completed",
                                                     finished_at=timezone.now(), output={})
        run(steps[3], 1, "waiting", state={"until": iso(_at(30))})
        item.update(current_step=3, lease_token="", next_run_at=_at(30), waiting_on="delay",
                    waiting_since=timezone.now(), waiting_detail={"until": iso(_at(30))})

    def delay_over():
        item.update(next_run_at=_at(-1))

    def completed():
        runs.filter(step=steps[3]).update(status="completed", finished_at=timezone.now())
        item.update(status="completed", output={"done": True}, finished_at=timezone.now(),
                    next_run_at=None, lease_token="", waiting_on="", waiting_since=None,
                    waiting_detail={})

    return [
        ("no worker beats", lambda: _beat(False), "differ"),
        ("a worker claims it", lambda: (_beat(True), claimed()), "differ"),
        ("its worker goes quiet", lambda: _beat(False), "differ"),
        ("its lease runs out", lease_lapsed, "differ"),
        ("another worker takes it over", taken_over, "differ"),
        ("it waits for approval", approval, "differ"),
        ("someone approves", decided, "differ"),
        ("it waits in a provider's line", provider_line, "differ"),
        ("the line moves within its bucket", line_moves_within_bucket, "same"),
        ("another item takes a slot", another_takes_a_slot, "same"),
        ("the line moves past a bucket", line_moves_past_bucket, "differ"),
        ("its next look at the provider is due", provider_look_due, "differ"),
        ("the attempt backs off", backoff, "differ"),
        ("the backoff is over", backoff_over, "differ"),
        ("the next attempt runs", next_attempt, "differ"),
        ("it waits out a delay", delay, "differ"),
        ("the delay is over", delay_over, "differ"),
        ("it completes", completed, "differ"),
    ]


def _other_bodies(api, world) -> list[dict]:
    """Bodies the story does not show: a failed, redacted item that was replayed, and its
    replay (carried steps), each with its own callback URL."""
    _cast, workflow, intake, token = world
    failed_id = trigger(api, intake.pk, token).json()["work_id"]
    replay_id = trigger(api, intake.pk, token).json()["work_id"]
    first = Step.objects.filter(workflow=workflow).order_by("position").first()
    WorkItem.objects.filter(pk=failed_id).update(
        status="failed", finished_at=timezone.now(), next_run_at=None, redacted_at=timezone.now(),
        error={"code": "rejected", "message": "no", "step": "approval 2", "step_position": 2},
        callback_url="https://hooks.example.com/x")
    WorkItem.objects.filter(pk=replay_id).update(replay_of_id=failed_id, resumed_from_step=2)
    StepRun.objects.create(work_item_id=replay_id, step=first, attempt=1, status="carried",
                           started_at=timezone.now(), finished_at=timezone.now(),
                           state={"carried_from": {"work_id": failed_id, "attempt": 1}})
    return [_look(api, intake, token, failed_id)[0], _look(api, intake, token, replay_id)[0]]


def test_every_field_of_the_poll_body_is_classified_and_each_change_moves_the_state(api, world):
    _cast, _workflow, intake, token = world
    _beat(True)
    work_id = trigger(api, intake.pk, token).json()["work_id"]
    WorkItem.objects.filter(pk=work_id).update(callback_url="https://hooks.example.com/x")
    body, state = _look(api, intake, token, work_id)
    bodies, changed_by_story = [body], set()
    for name, change, expect in _story(world, work_id):
        change()
        after, after_state = _look(api, intake, token, work_id)
        changed = _changed(body, after)
        assert changed, f"{name}: the body did not change (the story is wrong)"
        unclassified = changed - FIELDS.keys()
        assert not unclassified, f"{name}: classify {unclassified} in FIELDS"
        if expect == "same":
            assert after_state == state, f"{name}: {state} -> {after_state}"
            assert changed <= NOT.keys(), f"{name}: {changed - NOT.keys()} changed"
        else:
            assert after_state != state, f"{name}: the state stayed {state} ({changed})"
        if body["status"] not in ("completed", "failed"):
            changed_by_story |= changed
        body, state = after, after_state
        bodies.append(after)
    bodies += _other_bodies(api, world)
    seen = {_kind(p) for b in bodies for p in _paths(b)}
    assert seen - FIELDS.keys() == set(), "a new field of the poll body: classify it"
    stale = {p for p in FIELDS if p not in seen}
    assert stale == set(), f"FIELDS names what no body shows: {stale}"
    # Every field said to be in the state was driven to change by the story at least once.
    undriven = {p for p, what in FIELDS.items() if what == STATE} - changed_by_story
    assert undriven == set(), f"drive a change of {undriven}"


def test_the_provider_bucket_is_exact_near_the_front_and_coarse_behind():
    assert [ahead_bucket(n) for n in (0, 1, 9, 10, 19, 20, 99, 100, 537, 999)] == [
        0, 1, 9, 10, 10, 20, 90, 100, 500, 900]
    assert ahead_bucket(PROVIDER_AHEAD_SHOWN_MAX, True) == PROVIDER_AHEAD_SHOWN_MAX
    assert ahead_bucket(3, True) == PROVIDER_AHEAD_SHOWN_MAX  # "at least": past the count


# --- every way to wait names its reason --------------------------------------------------
# Kinds the poll derives (never stored on an item): who would claim a due item.
DERIVED = {WorkItem.Waiting.QUEUE, WorkItem.Waiting.WORKER}
STORED = [""] + [kind for kind in WorkItem.Waiting.values if kind not in DERIVED]
DETAILS = {
    "": {},
    "delay": {"seconds": 60, "until": "2030-01-01T00:00:00Z"},
    "approval": {"deadline": None, "instructions": "look"},
    "provider": {"provider": "p", "limit": 1, "in_flight": 1, "ahead": 2},
    "backoff": {"retry": True, "code": "http_error", "reason": "HTTP 503", "attempt": 1,
                "max_attempts": 3, "until": "2030-01-01T00:00:00Z"},
}
# Phase: (lease held, next run in minutes, a worker beats) -> what the body must say.
PHASES = {
    "worker holds it": (True, 60, True),
    "its worker went quiet": (True, 60, False),
    "lease ran out": (True, -1, True),
    "due, a worker runs": (False, -1, True),
    "due, no worker": (False, -1, False),
    "waiting": (False, 60, True),
    "not scheduled": (False, None, True),  # nothing would ever claim it: say so
}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("waiting_on", STORED)
def test_every_way_to_wait_names_its_reason(api, world, waiting_on, phase):
    _cast, workflow, intake, token = world
    leased, minutes, fresh = PHASES[phase]
    _beat(fresh)
    work_id = trigger(api, intake.pk, token).json()["work_id"]
    step = Step.objects.get(workflow=workflow, position=2)
    StepRun.objects.create(work_item_id=work_id, step=step, attempt=1,
                           status="running" if leased else "waiting",
                           started_at=timezone.now(), state=DETAILS[waiting_on])
    WorkItem.objects.filter(pk=work_id).update(
        status="running", current_step=1, lease_token="a" * 32 if leased else "",
        next_run_at=None if minutes is None else _at(minutes), waiting_on=waiting_on,
        waiting_since=timezone.now() if waiting_on else None,
        waiting_detail=DETAILS[waiting_on])
    body, _state = _look(api, intake, token, work_id)
    why, diagnosis = body["waiting_on"], body["diagnosis"]
    assert diagnosis and "None" not in diagnosis, diagnosis
    if phase == "worker holds it":
        assert why is None and diagnosis.startswith("Running step 2"), diagnosis
        return
    assert why is not None, diagnosis
    if phase == "its worker went quiet":
        assert why["kind"] == "worker" and why["lease_until"], why
        assert "no worker heartbeat" in diagnosis and "lease runs out" in diagnosis
    elif waiting_on and phase in ("waiting", "not scheduled"):
        assert why["kind"] == waiting_on, why
        assert f"Waiting on {waiting_on}" not in diagnosis  # not the catch-all
    elif phase == "waiting":
        assert why["kind"] == "queue" and "Scheduled" in diagnosis
    elif phase == "not scheduled":
        assert why["kind"] == "queue" and "Not scheduled" in diagnosis
    else:  # due: who takes it, and what it waited for
        assert why["kind"] == ("queue" if fresh else "worker"), why
        assert ("a worker is running" in diagnosis) == fresh
        assert ("qcluster" in diagnosis) == (not fresh)
        assert why.get("after") == (waiting_on or ("lease" if leased else None)), why
        # Past its time, a wait never says it still waits for it.
        assert "nothing to do" not in diagnosis and "Retrying" not in diagnosis
        assert "at its concurrency limit" not in diagnosis


def _waiting_on_approval(api, workflow, intake, token) -> str:
    """A triggered item parked at its approval step (position 2), undecided."""
    work_id = trigger(api, intake.pk, token).json()["work_id"]
    step = Step.objects.get(workflow=workflow, position=2)
    StepRun.objects.create(work_item_id=work_id, step=step, attempt=1, status="waiting",
                           started_at=timezone.now(), state={"instructions": "look"})
    WorkItem.objects.filter(pk=work_id).update(
        status="running", current_step=1, next_run_at=_at(600), waiting_on="approval",
        waiting_since=timezone.now(), waiting_detail={"instructions": "look"})
    return work_id


def test_a_decided_approval_still_says_who_decided_until_a_worker_applies_it(api, world):
    cast, workflow, intake, token = world
    _beat(True)
    work_id = _waiting_on_approval(api, workflow, intake, token)
    work_item_decide(item=WorkItem.objects.get(pk=work_id), decision="reject",
                     user=cast.member_a)
    body, state = _look(api, intake, token, work_id)
    assert body["waiting_on"]["kind"] == "approval" and body["waiting_on"]["decision"] == "reject"
    assert body["diagnosis"].startswith("Rejected by member_a")
    assert state.endswith(".reject")


# --- the long-poll wakes for them --------------------------------------------------------
def _long_poll(api, intake, token, work_id, state, seconds="20"):
    started = time.monotonic()
    response = api.get(f"/v1/intake/{intake.pk}/work/{work_id}",
                       {"wait": seconds, "state": state}, **bearer(token))
    return response, time.monotonic() - started


def _later(seconds: float, change) -> threading.Timer:
    def run():
        try:
            change()
        finally:
            connection.close()

    timer = threading.Timer(seconds, run)
    timer.start()
    return timer


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_wakes_on_an_approval_decision(api, world):
    cast, workflow, intake, token = world
    _beat(True)
    work_id = _waiting_on_approval(api, workflow, intake, token)
    _body, state = _look(api, intake, token, work_id)
    timer = _later(0.5, lambda: work_item_decide(item=WorkItem.objects.get(pk=work_id),
                                                 decision="approve", user=cast.member_a))
    response, elapsed = _long_poll(api, intake, token, work_id, state)
    timer.join()
    assert response.status_code == 200 and "Auxot-Wait-Refused" not in response
    assert response.json()["waiting_on"]["decision"] == "approve"
    assert response["Auxot-State"] != state
    assert elapsed < 15  # woke on the decision, not at the end of its 20 s


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_wakes_when_the_provider_line_moves(api, world):
    """No row of the item is written when the items ahead of it leave the line: the watcher
    reads the place as the poll does (cached a couple of seconds) and wakes on a new bucket."""
    cast, workflow, intake, token = world
    _beat(True)
    provider = Provider.objects.create(org=cast.org_a, name="p", model="m",
                                       base_url="https://llm.example.com/v1",
                                       concurrency_limit=1)
    others = WorkItem.objects.bulk_create([WorkItem(workflow=workflow, status="running")
                                           for _ in range(4)])
    early = timezone.now() - timedelta(minutes=5)
    ProviderTicket.objects.bulk_create([ProviderTicket(
        provider=provider, work_item=other, arrived_at=early + timedelta(seconds=n))
        for n, other in enumerate(others)])
    work_id = trigger(api, intake.pk, token).json()["work_id"]
    ProviderTicket.objects.create(provider=provider, work_item_id=work_id,
                                  arrived_at=timezone.now())
    WorkItem.objects.filter(pk=work_id).update(
        status="running", current_step=2, next_run_at=_at(60), waiting_on="provider",
        waiting_since=timezone.now(), waiting_detail={"provider": "p", "limit": 1, "ahead": 4})
    body, state = _look(api, intake, token, work_id)
    assert body["waiting_on"]["ahead"] == 4 and state.endswith(".p4")
    timer = _later(0.5, lambda: ProviderTicket.objects.filter(work_item=others[0]).delete())
    response, elapsed = _long_poll(api, intake, token, work_id, state)
    timer.join()
    assert response.status_code == 200 and "Auxot-Wait-Refused" not in response
    assert response.json()["waiting_on"]["ahead"] == 3
    assert response["Auxot-State"].endswith(".p3")
    assert elapsed < 15  # the cache's couple of seconds and a recheck, not the 20 s
