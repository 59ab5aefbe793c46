"""Conflicting actions on one work item are serialized on the item: exactly one wins.

Approve vs cancel over HTTP (a real threaded server, real transactions), and an approval
against the engine resuming the same item at its deadline. Several rounds each, because a
race lost by luck once proves nothing.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
import time_machine
from django.db import connection

from apikeys.services import apikey_issue
from auxot.errors import ApplicationError
from auxot.models import AuditEvent
from intakes.services import intake_create
from tests.conftest import make_workflow
from workflows.batch import work_item_process
from workflows.models import Approval, StepRun, WorkItem
from workflows.services import work_item_cancel, work_item_create, work_item_decide

ROUNDS = 6
T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def _approval_intake(cast, deadline=None):
    config = {"instructions": "Check it"} | ({"deadline_seconds": deadline} if deadline else {})
    workflow = make_workflow(cast.org_a, [("approval", config),
                                          ("transform", {"expression": "previous.decision"})],
                             name="Sign-off")
    return intake_create(org=cast.org_a, workflow=workflow, name="sign-off")


def _parked(intake) -> WorkItem:
    item = work_item_create(workflow=intake.workflow, intake=intake, input={})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.waiting_on) == ("running", "approval")
    return item


def _together(*calls):
    """Run the calls in threads released at the same instant; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        try:
            return call()
        finally:
            connection.close()  # each thread has its own connection

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _events(item, event: str) -> int:
    return AuditEvent.objects.filter(event=event, object_id=str(item.pk)).count()


@pytest.mark.django_db(transaction=True)
def test_approve_and_cancel_sent_together_exactly_one_wins(live_server, cast):
    intake = _approval_intake(cast)
    token = apikey_issue(org=cast.org_a, label="race", user=cast.member_a).token
    headers = {"Authorization": f"Bearer {token}"}
    wins = {"approve": 0, "cancel": 0}
    for _ in range(ROUNDS):
        item = _parked(intake)
        base = f"{live_server.url}/v1/intake/{intake.pk}/work/{item.pk}"
        approve, cancel = _together(
            lambda base=base: requests.post(f"{base}/approval", json={"decision": "approve"},
                                            headers=headers, timeout=30),
            lambda base=base: requests.post(f"{base}/cancel", headers=headers, timeout=30))
        codes = sorted([approve.status_code, cancel.status_code])
        assert codes == [200, 409], (approve.content, cancel.content)
        loser = cancel if approve.status_code == 200 else approve
        assert loser.json()["code"] == "conflict"
        item.refresh_from_db()
        if approve.status_code == 200:
            wins["approve"] += 1
            assert item.status == "running"
            assert Approval.objects.filter(work_item=item).count() == 1
            assert (_events(item, "work_item.approved"), _events(item, "work_item.canceled")) \
                == (1, 0)
        else:
            wins["cancel"] += 1
            assert (item.status, item.error["code"]) == ("failed", "canceled")
            assert not Approval.objects.filter(work_item=item).exists()
            assert (_events(item, "work_item.approved"), _events(item, "work_item.canceled")) \
                == (0, 1)
    assert sum(wins.values()) == ROUNDS


@pytest.mark.django_db(transaction=True)
def test_cancel_after_a_recorded_approval_gets_409_until_the_engine_applies_it(cast):
    intake = _approval_intake(cast)
    item = _parked(intake)
    work_item_decide(item=item, decision="approve", user=cast.member_a)
    with pytest.raises(ApplicationError) as refused:
        work_item_cancel(item=item, user=cast.admin_a)
    assert refused.value.code == "conflict"
    assert _events(item, "work_item.canceled") == 0
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.output) == ("completed", "approve")


@pytest.mark.django_db(transaction=True)
def test_cancel_wins_over_a_later_approve_which_leaves_nothing(cast):
    intake = _approval_intake(cast)
    item = _parked(intake)
    work_item_cancel(item=item, user=cast.admin_a)
    with pytest.raises(ApplicationError) as refused:
        work_item_decide(item=item, decision="approve", user=cast.member_a)
    assert refused.value.code == "conflict"
    assert not Approval.objects.exists()
    assert _events(item, "work_item.approved") == 0
    assert not StepRun.objects.filter(work_item=item, status=StepRun.Status.WAITING).exists()


@pytest.mark.django_db(transaction=True)
def test_approve_racing_the_deadline_resume_exactly_one_outcome(cast):
    intake = _approval_intake(cast, deadline=60)
    outcomes = set()
    for n in range(ROUNDS):
        with time_machine.travel(T0 + timedelta(hours=n), tick=False):
            item = _parked(intake)
        with time_machine.travel(T0 + timedelta(hours=n, seconds=61), tick=False):

            def decide(item=item):
                try:
                    work_item_decide(item=item, decision="approve", user=cast.member_a)
                    return "approved"
                except ApplicationError as exc:
                    return exc.code

            decided, _ = _together(decide, lambda item=item: work_item_process(
                work_id=item.pk, drain_seconds=0))
            work_item_process(work_id=item.pk, drain_seconds=0)  # if the engine found it busy
        item.refresh_from_db()
        outcomes.add(decided)
        if decided == "approved":
            assert (item.status, item.output) == ("completed", "approve")
            assert _events(item, "work_item.approved") == 1
        else:
            assert decided == "conflict"
            assert (item.status, item.error["code"]) == ("failed", "approval_timeout")
            assert not Approval.objects.filter(work_item=item).exists()
            assert _events(item, "work_item.approved") == 0
    assert outcomes <= {"approved", "conflict"}


class _WorkerLost(BaseException):
    """What SIGKILL does to a worker mid-step: nothing after it runs, the lease stays."""


def _resume_dies(monkeypatch) -> None:
    from workflows.kinds.approval import Approval as ApprovalKind

    real = ApprovalKind.resume

    def die_once(self, ctx):
        monkeypatch.setattr(ApprovalKind, "resume", real)
        raise _WorkerLost

    monkeypatch.setattr(ApprovalKind, "resume", die_once)


@pytest.mark.parametrize("decision", ["approve", "reject", None])
@pytest.mark.parametrize("deadline_passed", [False, True])
def test_a_worker_lost_while_resuming_an_approval_leaves_the_next_attempt_its_state(
        cast, monkeypatch, decision, deadline_passed):
    """A worker dies (or its lease runs out) while it resumes an item waiting on an
    approval: the next attempt resumes from what was recorded. It used to start the wait
    over: a recorded decision was lost, and the item waited for a new one that the
    Approval row refused (as it refused a cancel) for ever; without one, the deadline
    started again."""
    intake = _approval_intake(cast, deadline=86400)
    with time_machine.travel(T0, tick=False):
        item = _parked(intake)
        if decision:
            work_item_decide(item=item, decision=decision, user=cast.member_a)
    resumed_at = T0 + timedelta(seconds=86401 if deadline_passed else 60)
    with time_machine.travel(resumed_at, tick=False):
        WorkItem.objects.filter(pk=item.pk).update(next_run_at=resumed_at)  # a wake-up
        _resume_dies(monkeypatch)
        with pytest.raises(_WorkerLost):
            work_item_process(work_id=item.pk, drain_seconds=0)
    with time_machine.travel(resumed_at + timedelta(hours=1), tick=False):  # lease ran out
        work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    attempts = list(StepRun.objects.filter(work_item=item, step__position=1)
                    .order_by("attempt").values_list("status", flat=True))
    assert attempts[:2] == ["crashed", "completed" if decision == "approve" else
                            "failed" if decision or deadline_passed else "waiting"]
    if decision == "approve":
        assert (item.status, item.output) == ("completed", "approve")
    elif decision == "reject":
        assert (item.status, item.error["code"]) == ("failed", "rejected")
    elif deadline_passed:
        assert (item.status, item.error["code"]) == ("failed", "approval_timeout")
    else:  # still waiting, for the deadline it was given, and a decision is taken
        assert (item.status, item.waiting_on) == ("running", "approval")
        assert item.waiting_detail["deadline"] == "2026-11-30T12:00:00.000000Z"
        work_item_decide(item=item, decision="approve", user=cast.member_a)
        work_item_process(work_id=item.pk, drain_seconds=0)
        item.refresh_from_db()
        assert (item.status, item.output) == ("completed", "approve")
    assert Approval.objects.filter(work_item=item).count() == (1 if decision or not
                                                                deadline_passed else 0)


def test_a_slow_worker_whose_lease_ran_out_while_it_applied_a_decision_changes_nothing(
        cast, monkeypatch):
    """Worker A applies an approval so slowly that its lease runs out and worker B takes
    the item over: B applies the decision once; A's result, when it comes, is discarded,
    and A's attempt row keeps what B said of it (crashed): a late worker overwrites nothing
    of the newer holder's."""
    from workflows.kinds.approval import Approval as ApprovalKind

    intake = _approval_intake(cast)
    with time_machine.travel(T0, tick=False):
        item = _parked(intake)
        work_item_decide(item=item, decision="approve", user=cast.member_a)
    real = ApprovalKind.resume
    taken_over = []

    def slow(self, ctx):
        if not taken_over:  # A, stalled past its lease: B claims and finishes meanwhile
            taken_over.append(True)
            with time_machine.travel(T0 + timedelta(hours=1), tick=False):
                work_item_process(work_id=item.pk, drain_seconds=0)
        return real(self, ctx)

    monkeypatch.setattr(ApprovalKind, "resume", slow)
    with time_machine.travel(T0 + timedelta(seconds=1), tick=False):
        work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.output) == ("completed", "approve")
    assert list(StepRun.objects.filter(work_item=item, step__position=1).order_by("attempt")
                .values_list("status", flat=True)) == ["crashed", "completed"]
    assert (_events(item, "work_item.approved"), _events(item, "work_item.completed")) == (1, 1)


# Every action that decides a parked approval item's fate, and what its win leaves.
_FATE = {"approve": ("completed", None, "work_item.approved"),
         "reject": ("failed", "rejected", "work_item.rejected"),
         "cancel": ("failed", "canceled", "work_item.canceled"),
         "deadline": ("failed", "approval_timeout", None)}


def _act(name, item, cast):
    """Run one action; its name when it took effect, else the conflict it got."""
    try:
        if name == "cancel":
            work_item_cancel(item=item, user=cast.admin_a)
        elif name == "deadline":
            work_item_process(work_id=item.pk, drain_seconds=0)
            item.refresh_from_db()
            timed_out = (item.error or {}).get("code") == "approval_timeout"
            return name if timed_out else "found it busy or decided"
        else:
            work_item_decide(item=item, decision=name, user=cast.member_a)
        return name
    except ApplicationError as exc:
        assert exc.code == "conflict"
        return "conflict"
    finally:
        connection.close()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first, second", [
    (a, b) for i, a in enumerate(_FATE) for b in list(_FATE)[i:] if (a, b) != (
        "deadline", "deadline")])
def test_any_two_actions_on_a_parked_approval_at_once_have_one_outcome(cast, first, second):
    """Approve, reject, cancel and the engine's deadline resume, every pair (a twin too),
    released together: the item ends as exactly one of them decided, the other is a 409 (or
    the engine found nothing to do), and the audit log and approvals say the same."""
    intake = _approval_intake(cast, deadline=60)
    for n in range(3):
        with time_machine.travel(T0 + timedelta(hours=n), tick=False):
            item = _parked(intake)
        with time_machine.travel(T0 + timedelta(hours=n, seconds=61), tick=False):
            results = _together(*(lambda name=name, pk=item.pk: _act(
                name, WorkItem.objects.get(pk=pk), cast) for name in (first, second)))
            work_item_process(work_id=item.pk, drain_seconds=0)  # applies a decision
        item.refresh_from_db()
        won = [r for r in results if r in _FATE]
        assert len(won) == 1, results
        status, code, event = _FATE[won[0]]
        assert (item.status, (item.error or {}).get("code")) == (status, code), results
        events = {e: _events(item, e) for e in
                  ("work_item.approved", "work_item.rejected", "work_item.canceled")}
        assert events == {e: int(e == event) for e in events}, results
        assert Approval.objects.filter(work_item=item).count() == int(
            won[0] in ("approve", "reject"))
        assert StepRun.objects.filter(work_item=item, status="waiting").count() == 0


def test_a_worker_lost_while_ending_a_delay_does_not_start_the_delay_over(cast, monkeypatch):
    from workflows.kinds.delay import Delay

    workflow = make_workflow(cast.org_a, [("delay", {"seconds": 3600}),
                                          ("transform", {"expression": "'done'"})], name="Wait")
    with time_machine.travel(T0, tick=False):
        item = work_item_create(workflow=workflow, input={})
        work_item_process(work_id=item.pk, drain_seconds=0)
    real = Delay.resume

    def die_once(self, ctx):
        monkeypatch.setattr(Delay, "resume", real)
        raise _WorkerLost

    monkeypatch.setattr(Delay, "resume", die_once)
    with time_machine.travel(T0 + timedelta(hours=1), tick=False), pytest.raises(_WorkerLost):
        work_item_process(work_id=item.pk, drain_seconds=0)
    with time_machine.travel(T0 + timedelta(hours=1, minutes=10), tick=False):  # lease out
        work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.output) == ("completed", "done")  # not another hour's wait


def test_only_kinds_whose_resume_has_no_outside_effect_resume_after_a_crash():
    """A kind whose resume sends (http, agent: resume is execute) must count a lost worker
    as a crashed attempt and start anew, never replay its state as if nothing was sent."""
    from workflows.kinds import REGISTRY
    from workflows.kinds.base import StepKind

    resuming = {name for name, kind in REGISTRY.items() if kind.resumes_after_crash}
    assert resuming == {"approval", "delay"}
    for name in resuming:
        assert type(REGISTRY[name]).resume is not StepKind.resume, name
    assert {"http", "agent"} <= set(REGISTRY) - resuming
