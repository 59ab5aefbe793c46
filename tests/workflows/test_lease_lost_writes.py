"""Every write a worker makes after its claim changes nothing once its lease is lost.

Worker A claimed an item, opened its attempt, and stalled past its lease; worker B claimed
the item (and either still holds it or ran it to the end). Then A comes back and takes each
write path it has after a claim. Each is guarded by A's lease token (or leaves alone a row
B has marked): B's item, attempt rows, provider ticket and audit trail are as B left them.

Paths, and their guard:
- release (`_release`): the item's UPDATE matches (id, lease_token).
- pure batch (`_pure_batch`): attempts open under the lease (`_attempts_open`); the results
  are written for held items; a late one's open row is marked discarded only while it is
  still running (B counts it crashed).
- the unstarted items of a batch (`_unstarted_release`): their rows deleted only if held.
- a step run alone (`_attempt`): the crash mark of a running row and the resume/retry
  updates of a waiting one match only under the lease; the new row's insert is in the
  transaction of the lease check.
- a step's result (`_store_outcome`): written under the lease; otherwise its own row is
  marked discarded only while still running.
- finish / fail (`_finish`, `_fail`): work_item_finish guards on the token.
- a provider slot (`ProviderGate.acquire` / `.release`): only while the lease is held.
Harmless without a guard: the wake-ups (`work_wake_notify`, `drain_request`: a spare drain
finds nothing due), `provider_wake_next` (makes due items waiting on a provider and not
held by anyone). Approvals' decisions and cancels are not holders: they lock the item's row
and refuse while a worker holds a lease (workflows/services.py).
"""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from auxot.models import AuditEvent
from auxot.secrets import secret_create
from tests.conftest import make_workflow
from workflows import batch
from workflows.batch import claims_run, work_items_claim_batch
from workflows.engine import _attempt, _fail, _finish, _store_outcome
from workflows.kinds import Complete
from workflows.models import Provider, ProviderTicket, StepRun, WorkItem
from workflows.providers import ProviderGate, provider_slot_acquire
from workflows.services import work_item_create

TRANSFORM = ("transform", {"expression": "input"})
PAST_THE_LEASE = timedelta(hours=1)


def _snapshot() -> tuple:
    return (list(WorkItem.objects.order_by("pk").values()),
            list(StepRun.objects.order_by("pk").values()),
            list(ProviderTicket.objects.order_by("pk").values()),
            AuditEvent.objects.count())


def _a_opens(workflow) -> batch._Run:
    """Worker A: claims the item, opens its attempt (attempt 1, running), then stalls."""
    with transaction.atomic():
        work_item_create(workflow=workflow, input={"n": 1})
    [claim] = work_items_claim_batch(now=timezone.now(), limit=1)
    [run] = batch._runs_load([claim])
    batch._attempts_open([run], timezone.now())
    return run


def _b_takes_over(time_machine, finishes: bool) -> None:
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    claims = work_items_claim_batch(now=timezone.now(), limit=8)
    assert len(claims) == 1
    if finishes:
        assert claims_run(claims) == 1  # B counts A's attempt crashed, makes attempt 2
        return
    provider = Provider.objects.get()
    assert provider_slot_acquire(provider=provider, work_id=claims[0].item.pk,
                                 now=timezone.now(), lease_seconds=60,
                                 lease_token=claims[0].token).granted


def _gate(run):
    return ProviderGate(org_id=run.item.workflow.org_id, work_id=run.item.pk,
                        now=timezone.now(), lease_seconds=60, lease_token=run.token)


def _step(run):
    return run.steps[0]


LATE_WRITES = {
    "release": lambda run: batch._release([run]),
    "pure batch": lambda run: batch._pure_batch([run]),
    "item run": lambda run: batch.item_run(run),
    "attempt (crash mark, new row)": lambda run: _attempt(run, _step(run)),
    "store outcome": lambda run: _store_outcome(run, _step(run), run.latest[_step(run).pk],
                                                Complete({"late": True})),
    "finish": lambda run: _finish(run, WorkItem.Status.COMPLETED, output={"late": True}),
    "fail": lambda run: _fail(run, _step(run), "late", "late"),
    "provider acquire": lambda run: _gate(run).acquire(Provider.objects.get()),
    "provider release": lambda run: _gate(run).release(Provider.objects.get()),
}


@pytest.mark.parametrize("b_finished", [False, True], ids=["b_holds", "b_finished"])
@pytest.mark.parametrize("write", LATE_WRITES)
def test_a_late_workers_write_changes_nothing_of_the_newer_holder(
        cast, time_machine, write, b_finished):
    Provider.objects.create(org=cast.org_a, name="p", base_url="http://127.0.0.1:9/v1",
                            model="m", concurrency_limit=1, timeout_seconds=5)
    run_a = _a_opens(make_workflow(cast.org_a, [TRANSFORM]))
    _b_takes_over(time_machine, finishes=b_finished)
    [opened] = run_a.latest.values()
    before = _snapshot()
    result = LATE_WRITES[write](run_a)
    after = _snapshot()
    if not b_finished:
        # A's own open row, which B has not looked at yet, may be marked discarded by A
        # (B then counts it as an attempt made; it would have counted it crashed).
        for rows in (before[1], after[1]):
            for row in rows:
                if row["id"] == opened.pk and row["status"] == StepRun.Status.DISCARDED:
                    row.update(status=StepRun.Status.RUNNING, finished_at=None)
    assert after == before
    if write == "provider acquire":
        assert not result.granted  # A calls no provider beside B


def test_a_late_batchs_unstarted_items_keep_the_rows_the_newer_holder_counted(
        cast, monkeypatch, time_machine):
    """A opened attempt 1 of two items; it ran the first and was past its hold time for the
    second (unstarted). Meanwhile its lease ran out and B took both over, counting each
    attempt 1 crashed and completing attempt 2. A's hand-back deleted the unstarted item's
    attempt 1 (B's counted crash) and overwrote the other's with discarded."""
    workflow = make_workflow(cast.org_a, [TRANSFORM])
    for n in range(2):
        with transaction.atomic():
            work_item_create(workflow=workflow, input={"n": n})
    claims = work_items_claim_batch(now=timezone.now(), limit=8)
    assert len(claims) == 2
    runs_a = batch._runs_load(claims)
    monkeypatch.setattr(batch, "HOLD_SECONDS", 0)
    real_execute, took_over = batch._pure_execute, []

    def execute_then_stall(run, now, deadline):
        result = real_execute(run, now, deadline)
        if not took_over:  # A's first item ran; A stalls past its lease; B takes both
            took_over.append(True)
            time_machine.move_to(timezone.now() + PAST_THE_LEASE)
            claims_b = work_items_claim_batch(now=timezone.now(), limit=8)
            monkeypatch.setattr(batch, "HOLD_SECONDS", 60)  # B runs both (A's deadline is set)
            assert len(claims_b) == 2 and claims_run(claims_b) == 2
        return result

    monkeypatch.setattr(batch, "_pure_execute", execute_then_stall)
    assert batch._pure_batch(runs_a) == []
    assert took_over
    for run in runs_a:
        assert list(StepRun.objects.filter(work_item=run.item).order_by("attempt")
                    .values_list("attempt", "status")) == [(1, "crashed"), (2, "completed")]
    assert set(WorkItem.objects.values_list("status", flat=True)) == {"completed"}


@pytest.mark.parametrize("kind", ["http", "agent"])
def test_a_late_worker_makes_no_outside_call_beside_the_newer_holder(
        cast, fake_server, time_machine, kind):
    """A step with outside effects: A claimed the item and stalled before its attempt; B
    claimed it. A's run reaches no receiver (the attempt's lease check fails first; an
    agent's provider gate refuses the slot too), and changes nothing of B's."""
    from tests.fakeserver import Reply

    fake_server.script = [Reply(200, {"ok": True})]
    secret_create(org=cast.org_a, name="AI_KEY", value="sk-test-123",
                  allowed_hosts=["127.0.0.1"])
    provider = Provider.objects.create(org=cast.org_a, name="p", base_url=fake_server.url
                                       + "/v1", model="m", api_key_secret="AI_KEY",
                                       concurrency_limit=1, timeout_seconds=5)
    config = ({"method": "POST", "url": f"{fake_server.url}/hook"} if kind == "http"
              else {"provider": "p", "prompt": "hi"})
    with transaction.atomic():
        work_item_create(workflow=make_workflow(cast.org_a, [(kind, config)]), input={})
    [claim] = work_items_claim_batch(now=timezone.now(), limit=1)
    [run_a] = batch._runs_load([claim])
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    [claim_b] = work_items_claim_batch(now=timezone.now(), limit=1)
    before = _snapshot()
    batch.item_run(run_a)
    if kind == "agent":  # past the attempt's check (a stall between it and the gate)
        assert not _gate(run_a).acquire(provider).granted
    assert fake_server.requests == []
    assert _snapshot() == before
    assert WorkItem.objects.get().lease_token == claim_b.token
