"""A worker whose lease ran out never contests the attempt rows of the worker that took over.

Every attempt row the engine inserts (the first attempt of a pure run, one per item of a
batch; the attempt of a step run on its own) is inserted in the transaction that holds the
item's row and checks the lease token. A late worker, stalled past its lease while another
worker claimed its items, inserts nothing for them and drops them quietly; the new holder's
batch (up to AUXOT_DRAIN_BATCH items) goes on as if the late one were not there. Before,
both inserted attempt 1 of the same step: the unique (item, step, attempt) made the second
insert raise and failed that whole batch until its lease ran out.
"""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from auxot.models import AuditEvent
from tests.conftest import make_workflow
from workflows import batch
from workflows.batch import claims_run, work_items_claim_batch
from workflows.engine import _Run, work_item_claim
from workflows.models import StepRun, WorkItem
from workflows.services import work_item_create

TRANSFORM = ("transform", {"expression": "input"})
PAST_THE_LEASE = timedelta(hours=1)


def _items(workflow, count: int) -> list[WorkItem]:
    items = []
    for n in range(count):  # separate commits: the first is the oldest, claimed first
        with transaction.atomic():
            items.append(work_item_create(workflow=workflow, input={"n": n}))
    return items


def _attempts(item) -> list[tuple]:
    return list(StepRun.objects.filter(work_item=item).order_by("step__position", "attempt")
                .values_list("step__position", "attempt", "status"))


# How the late worker comes to the pure step: its batch's first step, or its own item's
# next step after one run alone (both open the attempt in _pure_batch).
LATE = {"batch": lambda runs: batch._pure_batch(runs),
        "alone": lambda runs: batch.item_run(runs[0])}


@pytest.mark.parametrize("late", LATE)
def test_a_late_worker_at_a_pure_step_leaves_the_new_holders_batch_alone(
        cast, monkeypatch, time_machine, late):
    items = _items(make_workflow(cast.org_a, [TRANSFORM, TRANSFORM]), 3)
    [claim] = work_items_claim_batch(now=timezone.now(), limit=1)  # worker A takes the first
    assert claim.item.pk == items[0].pk
    runs_a = batch._runs_load([claim])  # A is at the pure step, then stalls past its lease
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    real_load, stalled = batch._runs_load, [True]

    def a_writes_between_bs_load_and_bs_insert(claims):
        runs = real_load(claims)
        if stalled:  # B loaded its batch (no attempt yet); A comes back now, before B writes
            stalled.clear()
            LATE[late](runs_a)
        return runs

    monkeypatch.setattr(batch, "_runs_load", a_writes_between_bs_load_and_bs_insert)
    claims = work_items_claim_batch(now=timezone.now(), limit=32)  # worker B: all three
    assert sorted(c.item.pk for c in claims) == sorted(item.pk for item in items)
    assert claims_run(claims) == 3
    assert not stalled, "A never came back: the test proves nothing"
    assert set(WorkItem.objects.values_list("status", flat=True)) == {"completed"}
    for item in items:  # A wrote nothing: no attempt, no result, no audit
        assert _attempts(item) == [(1, 1, "completed"), (2, 1, "completed")]
    assert AuditEvent.objects.filter(event="work_item.completed").count() == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_a_late_worker_between_its_lease_check_and_its_attempt_row_holds_the_item(
        cast, monkeypatch, time_machine):
    """A step run alone (here an approval): worker A checked its lease and is about to insert
    its attempt row when its lease runs out and worker B claims a batch. The check and the
    insert are one transaction on the item's row, so B's claim passes the item by (it is
    A's, not due), and B's batch is B's other items, untouched."""
    workflow = make_workflow(cast.org_a, [("approval", {"instructions": "ok?"})])
    first, second = _items(workflow, 2)
    claim_a = work_item_claim(work_id=first.pk, now=timezone.now())
    real_create = StepRun.objects.create
    a_inside, a_go = threading.Event(), threading.Event()
    worker_a: dict = {}

    def create(**fields):
        if threading.current_thread() is thread_a:
            a_inside.set()  # lease checked, attempt row not yet inserted
            assert a_go.wait(30)
        else:  # B is about to insert its own: A inserts first, as the race has it
            a_go.set()
            thread_a.join(30)
        return real_create(**fields)

    def run_a():
        try:
            batch.item_run(_Run(claim_a))
            worker_a["result"] = "ran"
        except Exception as exc:
            worker_a["result"] = exc
        finally:
            connection.close()

    monkeypatch.setattr(StepRun.objects, "create", create)
    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    assert a_inside.wait(30)
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    claims = work_items_claim_batch(now=timezone.now(), limit=32)  # worker B
    assert claims_run(claims) == len(claims)
    a_go.set()
    thread_a.join(30)
    assert worker_a["result"] == "ran", worker_a["result"]
    assert [c.item.pk for c in claims] == [second.pk]
    for item in (first, second):
        assert _attempts(item) == [(1, 1, "waiting")]
        item.refresh_from_db()
        assert (item.status, item.waiting_on) == ("running", "approval")
