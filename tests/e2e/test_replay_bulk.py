"""Bulk replay: batched, resumable, each failed item replayed exactly once, also across a
SIGKILL of the worker."""

from datetime import timedelta

import pytest
from django.utils import timezone

from auxot.errors import ApplicationError
from auxot.models import AuditEvent
from tests.conftest import make_workflow
from tests.processes import wait_for
from workflows import replay
from workflows.models import ReplayBatch, WorkItem
from workflows.replay import (
    replay_batch_chunk,
    replay_batch_create,
    replay_batch_process,
    replay_batches_wake,
    work_item_replay,
)
from workflows.services import work_item_cancel, work_item_create


def _failed(workflow, count: int) -> list[WorkItem]:
    now = timezone.now()
    items = WorkItem.objects.bulk_create([
        WorkItem(workflow=workflow, input={"n": n}, status=WorkItem.Status.FAILED,
                 created_at=now, finished_at=now,
                 error={"code": "http_status", "message": "HTTP 500", "step": "transform 1",
                        "step_position": 1})
        for n in range(count)])
    return items


@pytest.fixture
def flow(cast):
    return make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Bulk")


def test_batch_replays_each_item_once_in_chunks(cast, flow, settings):
    settings.AUXOT_REPLAY_CHUNK_SIZE = 4
    items = _failed(flow, 10)
    batch = replay_batch_create(org=cast.org_a, work_ids=[i.pk for i in items],
                                user=cast.member_a)
    assert replay_batch_chunk(batch_id=batch.pk) == (4, True)
    batch.refresh_from_db()
    assert (batch.cursor, batch.replayed, batch.status) == (4, 4, "running")
    assert replay_batch_process(batch_id=batch.pk) == 6
    batch.refresh_from_db()
    assert (batch.cursor, batch.replayed, batch.skipped, batch.status) == (10, 10, 0, "done")
    assert replay_batch_process(batch_id=batch.pk) == 0  # a twin task finds nothing to do
    replays = WorkItem.objects.filter(replay_of__isnull=False)
    assert replays.count() == 10
    assert set(replays.values_list("replay_of_id", flat=True)) == {i.pk for i in items}
    assert set(replays.values_list("replay_batch_id", flat=True)) == {batch.pk}
    assert AuditEvent.objects.filter(event="work_item.replayed").count() == 10
    assert AuditEvent.objects.filter(event="replay_batch.finished").count() == 1


def test_batch_skips_what_it_must_not_replay_and_says_why(cast, flow):
    items = _failed(flow, 2)
    already = work_item_replay(item=items[1], user=cast.member_a)
    pending = work_item_create(workflow=flow, input={})
    canceled = work_item_create(workflow=flow, input={})
    work_item_cancel(item=canceled, user=cast.member_a)
    other_org = _failed(make_workflow(cast.org_b, [("transform", {"expression": "input"})],
                                      name="B"), 1)[0]
    ids = [items[0].pk, items[1].pk, pending.pk, canceled.pk, other_org.pk]
    batch = replay_batch_create(org=cast.org_a, work_ids=ids, user=cast.member_a)
    replay_batch_process(batch_id=batch.pk)
    batch.refresh_from_db()
    assert (batch.replayed, batch.skipped) == (1, 4)
    assert batch.skip_reasons == {"already replayed": 1, "not found": 1, "not failed": 1,
                                  "canceled": 1}
    assert WorkItem.objects.filter(replay_of=items[1]).get() == already
    assert not WorkItem.objects.filter(replay_of=other_org).exists()


def test_crash_inside_a_chunk_repeats_nothing(cast, flow, settings, monkeypatch):
    settings.AUXOT_REPLAY_CHUNK_SIZE = 5
    items = _failed(flow, 12)
    batch = replay_batch_create(org=cast.org_a, work_ids=[i.pk for i in items],
                                user=cast.member_a)
    real, calls = replay.work_item_replay, []

    def dies_on_the_eighth(**kwargs):
        calls.append(kwargs["item"].pk)
        if len(calls) == 8:
            raise SystemExit("worker killed")  # not an ApplicationError: the chunk aborts
        return real(**kwargs)

    monkeypatch.setattr(replay, "work_item_replay", dies_on_the_eighth)
    with pytest.raises(SystemExit):
        replay_batch_process(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.cursor == 5  # the first chunk committed, the second rolled back whole
    assert WorkItem.objects.filter(replay_of__isnull=False).count() == 5
    monkeypatch.setattr(replay, "work_item_replay", real)
    replay_batch_process(batch_id=batch.pk)
    replays = WorkItem.objects.filter(replay_of__isnull=False)
    assert replays.count() == 12
    assert len(set(replays.values_list("replay_of_id", flat=True))) == 12


def test_stalled_batch_is_handed_to_a_worker_again(cast, flow, time_machine, monkeypatch):
    sent = []
    monkeypatch.setattr(replay, "task_enqueue", lambda **kw: sent.append(kw["arg"]))
    batch = replay_batch_create(org=cast.org_a, work_ids=[i.pk for i in _failed(flow, 1)],
                                user=cast.member_a)
    assert replay_batches_wake() == 0  # fresh: its first task is on its way
    time_machine.move_to(timezone.now() + timedelta(seconds=31))
    assert replay_batches_wake() == 1
    assert replay_batches_wake() == 0  # once per stall period, not on every tick
    assert sent == [str(batch.pk)]
    replay_batch_process(batch_id=batch.pk)
    time_machine.move_to(timezone.now() + timedelta(seconds=120))
    assert replay_batches_wake() == 0  # done batches are left alone


def test_batch_needs_an_actor_and_some_items(cast, flow):
    items = _failed(flow, 1)
    with pytest.raises(ApplicationError):
        replay_batch_create(org=cast.org_a, work_ids=[i.pk for i in items],
                            user=cast.auditor_a)
    with pytest.raises(ApplicationError):
        replay_batch_create(org=cast.org_a, work_ids=[], user=cast.member_a)
    assert not ReplayBatch.objects.exists()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_sigkill_during_a_bulk_replay_of_1000_items_replays_each_exactly_once(
        cast, flow, clusters):
    items = _failed(flow, 1000)
    batch = replay_batch_create(org=cast.org_a, work_ids=[i.pk for i in items],
                                user=cast.member_a)
    env = {"AUXOT_REPLAY_CHUNK_SIZE": "20", "AUXOT_REPLAY_STALL_SECONDS": "1"}
    first = clusters(**env)
    wait_for(lambda: ReplayBatch.objects.filter(pk=batch.pk, cursor__gte=100).exists(),
             timeout=120, interval=0.05, what="the bulk replay to get going")
    first.kill()
    batch.refresh_from_db()
    assert batch.status == "running", "the batch finished before the kill: nothing tested"
    clusters(**env)
    wait_for(lambda: ReplayBatch.objects.filter(pk=batch.pk, status="done").exists(),
             timeout=240, interval=0.2, what="the bulk replay to finish after the restart")
    batch.refresh_from_db()
    assert (batch.total, batch.cursor, batch.replayed, batch.skipped) == (1000, 1000, 1000, 0)
    replays = WorkItem.objects.filter(replay_of__isnull=False)
    assert replays.count() == 1000
    assert len(set(replays.values_list("replay_of_id", flat=True))) == 1000
    assert AuditEvent.objects.filter(event="work_item.replayed").count() == 1000
