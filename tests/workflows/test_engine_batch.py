"""Drains: batch claims, pure steps in one transaction, a bounded broker, wake-ups."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from tests.conftest import make_workflow
from workflows import batch, tasks, wake
from workflows.batch import claims_run, work_drain, work_item_process, work_items_claim_batch
from workflows.kinds import kind_get
from workflows.models import StepRun, WorkItem
from workflows.services import work_item_create
from workflows.wake import WakeListener, work_items_wake, work_wake_notify

TRANSFORM = ("transform", {"expression": "input"})


def _items(workflow, count: int) -> list[WorkItem]:
    with transaction.atomic():
        return [work_item_create(workflow=workflow, input={"n": n}) for n in range(count)]


@pytest.mark.django_db(transaction=True)
def test_batch_claim_never_gives_an_item_to_two_workers(cast):
    workflow = make_workflow(cast.org_a, [TRANSFORM])
    items = _items(workflow, 120)
    taken: list[list] = [[] for _ in range(4)]
    start = threading.Barrier(len(taken))

    def worker(mine: list) -> None:
        try:
            start.wait(10)
            while claims := work_items_claim_batch(now=timezone.now(), limit=7):
                mine.extend(claim.item.pk for claim in claims)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = [pk for mine in taken for pk in mine]
    assert sorted(claimed) == sorted(item.pk for item in items)  # each exactly once
    assert sum(1 for mine in taken if mine) >= 2  # the workers really did share the work


def test_a_claimed_item_is_not_due_until_its_lease_ends(cast, time_machine):
    _items(make_workflow(cast.org_a, [TRANSFORM]), 3)
    assert len(work_items_claim_batch(now=timezone.now(), limit=10)) == 3
    assert work_items_claim_batch(now=timezone.now(), limit=10) == []
    time_machine.move_to(timezone.now() + timedelta(minutes=5))  # that worker died
    assert len(work_items_claim_batch(now=timezone.now(), limit=10)) == 3


def test_pure_steps_of_one_item_commit_in_one_transaction(cast):
    workflow = make_workflow(cast.org_a, [TRANSFORM, ("delay", {"seconds": 0}), TRANSFORM])
    [item] = _items(workflow, 1)
    with CaptureQueriesContext(connection) as queries:
        work_item_process(work_id=item.pk, drain_seconds=0)
    sql = [q["sql"].upper() for q in queries.captured_queries]
    transactions = [s for s in sql if s.startswith("SAVEPOINT")]
    # Under the test's transaction a commit is a savepoint: the first opens the attempt
    # row under the item's lock (committed before the steps run), the second commits every
    # result.
    assert len(transactions) == 2
    opening, results = (sql.index(transactions[0]), sql.index(transactions[1]))
    # The only writes before the results: the claim, then the first attempt row.
    assert [s.split()[0] for s in sql[:results]
            if not s.startswith(("SELECT", "SAVEPOINT", "RELEASE"))] == ["UPDATE", "INSERT"]
    assert "FOR UPDATE" in sql[opening + 1] or connection.vendor != "postgresql"
    item.refresh_from_db()
    assert item.status == "completed"
    assert list(StepRun.objects.filter(work_item=item).values_list(
        "step__position", "attempt", "status")) == [
        (1, 1, "completed"), (2, 1, "completed"), (3, 1, "completed")]


def test_pure_steps_run_in_one_pass_keep_their_own_times(cast, monkeypatch):
    """A step starts when the one before it ended, not when the pass began: the timeline
    the poll shows never has a step starting before its predecessor finished."""
    import itertools

    from workflows.presenters import work_item_view

    base, ticks, lock = timezone.now(), itertools.count(1), threading.Lock()

    def now():  # a clock that moves 10 ms per reading, so equal times cannot hide an order
        with lock:
            return base + timedelta(milliseconds=10 * next(ticks))

    monkeypatch.setattr(batch.timezone, "now", now)
    workflow = make_workflow(cast.org_a, [TRANSFORM, TRANSFORM, TRANSFORM])
    [item] = _items(workflow, 1)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    steps = work_item_view(item).body["steps"]
    times = [(row["started_at"], row["finished_at"]) for row in steps]
    assert all(start < end for start, end in times), times
    assert all(times[n][1] <= times[n + 1][0] for n in range(2)), times
    assert times[-1][1] <= work_item_view(item).body["finished_at"]


def test_worker_dying_in_a_pure_run_counts_one_crashed_attempt(cast, monkeypatch,
                                                                time_machine):
    workflow = make_workflow(cast.org_a, [TRANSFORM, TRANSFORM])
    [item] = _items(workflow, 1)

    def killed(*args, **kwargs):
        raise SystemExit("SIGKILL")  # nothing after the attempt row reaches the database

    monkeypatch.setattr(batch, "_pure_commit", killed)
    with pytest.raises(SystemExit):
        work_item_process(work_id=item.pk, drain_seconds=0)
    monkeypatch.undo()
    assert list(StepRun.objects.filter(work_item=item).values_list("status", flat=True)) == [
        "running"]
    time_machine.move_to(timezone.now() + timedelta(minutes=5))
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed"
    assert list(StepRun.objects.filter(work_item=item).values_list(
        "step__position", "attempt", "status")) == [
        (1, 1, "crashed"), (1, 2, "completed"), (2, 1, "completed")]


def test_drain_runs_a_backlog_with_queries_per_batch_not_per_item(
        cast, django_assert_num_queries):
    _items(make_workflow(cast.org_a, [TRANSFORM, TRANSFORM]), 10)
    # Per batch: claim, load items, steps, attempts; a transaction opening the first
    # attempt rows (savepoint, lock held items, insert, release); one transaction for the
    # results (savepoint, lock held items, items, audits, attempt results, second attempts,
    # release). Then the claim that finds nothing left.
    with django_assert_num_queries(3 * 15 + 1):
        assert work_drain(budget=30, batch=4) == 10
    assert set(WorkItem.objects.values_list("status", flat=True)) == {"completed"}
    assert StepRun.objects.filter(status="completed").count() == 20


def test_a_slow_batch_hands_its_unstarted_items_back(cast, monkeypatch):
    # Approval steps are not pure: they run one item after the other.
    _items(make_workflow(cast.org_a, [("approval", {"instructions": "ok?"})]), 3)
    monkeypatch.setattr(batch, "HOLD_SECONDS", 0.0)
    claims = work_items_claim_batch(now=timezone.now(), limit=10)
    assert claims_run(claims) == 1
    assert StepRun.objects.values("work_item").distinct().count() == 1
    released = WorkItem.objects.filter(step_runs__isnull=True)
    assert released.count() == 2
    assert set(released.values_list("lease_token", flat=True)) == {""}
    assert all(item.next_run_at <= timezone.now() for item in released)  # due again at once


def test_a_backlog_keeps_at_most_one_drain_waiting_on_the_broker(cast):
    workflow = make_workflow(cast.org_a, [TRANSFORM])
    for n in range(500):  # 500 separate commits, as 500 triggers would make
        with transaction.atomic():
            work_item_create(workflow=workflow, input={"n": n})
    for _ in range(5):  # ticks of the safety net
        work_items_wake()
    assert WorkItem.objects.filter(status="pending").count() == 500
    assert OrmQ.objects.count() == 1


def test_a_lost_drain_message_is_replaced_once_not_per_item_or_tick(cast):
    _items(make_workflow(cast.org_a, [TRANSFORM]), 50)
    OrmQ.objects.all().delete()  # the broker lost it (Redis flushed, a row deleted)
    assert [work_items_wake() for _ in range(5)] == [1, 0, 0, 0, 0]
    assert OrmQ.objects.count() == 1
    # A worker takes that message: the next tick may add one, never one per item.
    OrmQ.objects.update(lock=timezone.now() + timedelta(minutes=5))
    assert [work_items_wake() for _ in range(3)] == [1, 0, 0]
    assert OrmQ.objects.count() == 2


def test_nothing_due_adds_no_drain(cast):
    assert work_items_wake() == 0
    assert OrmQ.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_committed_wake_reaches_the_listener_and_a_rolled_back_one_does_not(cast):
    listener = WakeListener()
    try:
        listener.wait(0.01)  # starts listening
        with transaction.atomic():
            work_wake_notify()
            transaction.set_rollback(True)
        if connection.vendor == "postgresql":
            assert listener.wait(0.3) is False
            with transaction.atomic():
                work_wake_notify()
            assert listener.wait(5) is True
            assert OrmQ.objects.count() == 0  # a NOTIFY, not a broker row
        else:  # no NOTIFY: the wake is a drain message, written in the same commit
            assert OrmQ.objects.count() == 0
            with transaction.atomic():
                work_wake_notify()
            assert OrmQ.objects.count() == 1
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_with_the_redis_broker_the_committing_process_requests_the_drain(cast, settings,
                                                                        monkeypatch):
    settings.REDIS_URL = "redis://127.0.0.1:6379/12"
    requested = []
    monkeypatch.setattr(wake, "drain_request", lambda: bool(requested.append(1)) or True)
    listener = WakeListener()
    try:
        listener.wait(0.01)  # starts listening
        assert wake.wake_is_notify() is False
        with transaction.atomic():
            work_wake_notify()
            transaction.set_rollback(True)
        assert requested == []
        with transaction.atomic():
            work_wake_notify()
            assert requested == []  # not before the row is visible
        assert requested == [1]
        assert listener.wait(0.3) is False  # no NOTIFY, so no ticker in between
    finally:
        listener.close()


def test_an_item_canceled_during_its_batch_keeps_only_a_discarded_attempt(cast, monkeypatch):
    from workflows.kinds import transform as steps

    items = _items(make_workflow(cast.org_a, [TRANSFORM, TRANSFORM]), 3)
    real = steps.Transform.execute

    def cancel_the_second(self, ctx):
        if ctx.work_id == items[1].pk:
            WorkItem.objects.filter(pk=ctx.work_id).update(status="failed", lease_token="",
                                                           next_run_at=None)
        return real(self, ctx)

    monkeypatch.setattr(steps.Transform, "execute", cancel_the_second)
    assert work_drain(budget=30) == 3
    statuses = dict(WorkItem.objects.values_list("pk", "status"))
    assert [statuses[item.pk] for item in items] == ["completed", "failed", "completed"]
    assert list(StepRun.objects.filter(work_item=items[1]).values_list(
        "step__position", "status")) == [(1, "discarded")]
    assert StepRun.objects.filter(status="completed").count() == 4


def _task_spends(monkeypatch, seconds: float) -> list[str]:
    """Each http step's call takes `seconds` of the running task's time (its clock moves
    back instead of the test waiting); returns the steps called, in order."""
    http, called = kind_get("http"), []
    real = http.execute

    def slow(ctx):
        called.append(ctx.step_name)
        batch._task.get().started -= seconds
        return real(ctx)

    monkeypatch.setattr(http, "execute", slow)
    return called


def test_a_step_that_would_outlast_its_task_waits_for_a_fresh_task(cast, fake_server,
                                                                    monkeypatch, settings):
    """django-q2 kills a task after AUXOT_TASK_TIMEOUT_SECONDS. Two 200 s steps in a 300 s
    task: the second would be killed mid-request, counted as crashed and sent again. It is
    handed back unstarted instead, and the task stops claiming."""
    settings.AUXOT_TASK_TIMEOUT_SECONDS, settings.AUXOT_LEASE_GRACE_SECONDS = 300, 10
    workflow = make_workflow(cast.org_a, [("http", {"url": f"{fake_server.url}/a"}),
                                          ("http", {"url": f"{fake_server.url}/b"})])
    workflow.steps.update(timeout_seconds=200)
    [item] = _items(workflow, 1)
    called = _task_spends(monkeypatch, 200)
    claims = []
    real_claim = batch.work_items_claim_batch
    monkeypatch.setattr(batch, "work_items_claim_batch",
                        lambda **kw: claims.append(1) or real_claim(**kw))

    tasks.work_drain()
    item.refresh_from_db()
    assert called == ["http 1"]
    assert list(StepRun.objects.filter(work_item=item).values_list(
        "step__position", "status")) == [(1, "completed")]  # step 2 has no attempt row
    assert (item.status, item.current_step, item.lease_token) == ("running", 1, "")
    assert item.next_run_at <= timezone.now()  # due again at once, for a fresh task
    assert len(claims) == 1  # out of time: the task did not claim it again and again
    assert OrmQ.objects.exists()  # and a drain is waiting for it

    tasks.work_drain()  # a fresh task: step 2 fits
    item.refresh_from_db()
    assert called == ["http 1", "http 2"]
    assert item.status == "completed"
    assert list(StepRun.objects.filter(work_item=item).values_list(
        "step__position", "attempt", "status")) == [(1, 1, "completed"), (2, 1, "completed")]


def test_a_step_with_the_longest_timeout_starts_in_a_fresh_task(cast, fake_server,
                                                                 monkeypatch, settings):
    """The check cannot starve an item: a fresh task's first slow step always starts, even
    after pure steps and with the longest timeout a step may have."""
    settings.AUXOT_TASK_TIMEOUT_SECONDS, settings.AUXOT_LEASE_GRACE_SECONDS = 300, 10
    settings.AUXOT_STEP_TIMEOUT_SECONDS = 10_000  # clamped to step_timeout_max(): 280 s
    workflow = make_workflow(cast.org_a, [TRANSFORM, ("http", {"url": f"{fake_server.url}/a"})])
    assert workflow.steps.get(position=2).timeout == 280
    [item] = _items(workflow, 1)
    called = _task_spends(monkeypatch, 0)
    tasks.work_item_run(str(item.pk))
    item.refresh_from_db()
    assert (called, item.status) == (["http 2"], "completed")



def _items_with_outputs(cast, sizes: list[int]) -> list[WorkItem]:
    """Items at their second transform step, each with a first step's output of about
    `size` characters stored."""
    workflow = make_workflow(cast.org_a, [TRANSFORM, ("transform", {"expression": "input"})])
    first = workflow.steps.order_by("position").first()
    now = timezone.now()
    items = _items(workflow, len(sizes))
    StepRun.objects.bulk_create(
        StepRun(work_item=item, step=first, attempt=1, status="completed", started_at=now,
                finished_at=now, output={"text": "x" * size}) for item, size in zip(
            items, sizes, strict=True))
    WorkItem.objects.filter(pk__in=[i.pk for i in items]).update(current_step=1)
    return items


def _groups_loaded(monkeypatch) -> list[int]:
    loads: list[int] = []
    real = batch._runs_load

    def counted(claims):
        loads.append(len(claims))
        return real(claims)

    monkeypatch.setattr(batch, "_runs_load", counted)
    return loads


def test_a_batch_loads_its_items_step_outputs_a_budget_at_a_time(cast, settings,
                                                                monkeypatch):
    """A claim loaded up to AUXOT_DRAIN_BATCH items with all their step outputs at once:
    32 items of AUXOT_ITEM_OUTPUT_MAX_CHARS (32 MiB) each were 1 GiB in one worker. Now the
    claim measures each item's stored outputs (in its items query) and the batch runs in
    groups whose outputs fit AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS; an item past it alone."""
    settings.AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS = 2500
    items = _items_with_outputs(cast, [1000, 1000, 1000, 3000, 100, 100])
    loads = _groups_loaded(monkeypatch)
    claims = work_items_claim_batch(now=timezone.now(), limit=10)
    # As stored JSON text: `{"text": "x…"}` (the database's own spacing).
    assert [c.item.outputs_stored_chars - size for c, size in zip(
        claims, [1000, 1000, 1000, 3000, 100, 100], strict=True)] == [12] * 6
    assert claims_run(claims) == 6
    assert loads == [2, 1, 1, 2]
    assert set(WorkItem.objects.filter(pk__in=[i.pk for i in items]).values_list(
        "status", flat=True)) == {"completed"}


def test_a_batch_within_its_budget_loads_once(cast, monkeypatch):
    _items_with_outputs(cast, [1000, 1000, 1000])
    loads = _groups_loaded(monkeypatch)
    assert work_drain(budget=30, batch=10) == 3
    assert loads == [3]


def test_a_slow_group_hands_back_the_groups_after_it_unloaded(cast, settings, monkeypatch):
    settings.AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS = 1500
    _items_with_outputs(cast, [1000, 1000, 1000])
    loads = _groups_loaded(monkeypatch)
    monkeypatch.setattr(batch, "HOLD_SECONDS", 0.0)
    claims = work_items_claim_batch(now=timezone.now(), limit=10)
    assert claims_run(claims) == 1
    assert loads == [1]
    released = WorkItem.objects.exclude(status="completed")
    assert released.count() == 2
    assert set(released.values_list("lease_token", flat=True)) == {""}
    assert all(item.next_run_at <= timezone.now() for item in released)
