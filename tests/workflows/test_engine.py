"""The engine: steps in order, outputs handed on, waits that hold no worker, crashes counted."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from tests.conftest import make_workflow
from workflows.batch import work_item_process
from workflows.engine import work_item_claim
from workflows.models import StepRun, WorkItem
from workflows.services import work_item_create
from workflows.wake import work_items_wake


def _item(workflow, data=None):
    return work_item_create(workflow=workflow, input=data if data is not None else {"n": 2})


def _run(item, **kw):
    work_item_process(work_id=item.pk, drain_seconds=0, **kw)
    item.refresh_from_db()
    return item


def test_transforms_run_in_order_and_pass_outputs(cast):
    wf = make_workflow(cast.org_a, [
        ("transform", {"expression": "{doubled: input.n, tag: 'a'}"}),
        ("transform", {"expression": "{seen: previous.tag, first: steps.\"transform 1\".doubled}"}),
    ])
    item = _run(_item(wf))
    assert item.status == "completed"
    assert item.output == {"seen": "a", "first": 2}
    assert item.started_at and item.finished_at
    runs = StepRun.objects.filter(work_item=item)
    assert [(r.step.position, r.attempt, r.status) for r in runs] == [
        (1, 1, "completed"), (2, 1, "completed")]


def test_bad_expression_fails_item_naming_the_step(cast):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input.["})])
    item = _run(_item(wf))
    assert item.status == "failed"
    assert item.error["code"] == "bad_expression"
    assert item.error["step"] == "transform 1"
    assert item.next_run_at is None


def test_delay_parks_item_without_holding_a_worker(cast, time_machine):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                   ("delay", {"seconds": 5})])
    item = _run(_item(wf, {"k": 1}))
    assert item.status == "running"
    assert item.waiting_on == "delay"
    assert item.lease_token == ""
    assert work_item_claim(work_id=item.pk, now=timezone.now()) is None  # not due yet
    time_machine.move_to(timezone.now() + timedelta(seconds=6))
    OrmQ.objects.all().delete()  # the drain that ran it is gone: the sweep must ask again
    assert work_items_wake() == 1
    item = _run(item)
    assert item.status == "completed"
    assert item.output == {"k": 1}  # a delay passes the previous output through
    assert StepRun.objects.filter(work_item=item, step__position=1).count() == 1


def test_claim_is_exclusive(cast):
    item = _item(make_workflow(cast.org_a, [("transform", {"expression": "input"})]))
    now = timezone.now()
    assert work_item_claim(work_id=item.pk, now=now) is not None
    assert work_item_claim(work_id=item.pk, now=now) is None


def test_dead_workers_attempt_is_counted_and_retried(cast, time_machine):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    item = _item(wf)
    claim = work_item_claim(work_id=item.pk, now=timezone.now())
    step = wf.steps.get()
    # The worker wrote its attempt row and died.
    StepRun.objects.create(work_item=item, step=step, attempt=1, status="running",
                           started_at=timezone.now())
    assert claim is not None
    time_machine.move_to(timezone.now() + timedelta(seconds=120))
    item = _run(item)
    assert item.status == "completed"
    assert list(StepRun.objects.filter(work_item=item).values_list("attempt", "status")) == [
        (1, "crashed"), (2, "completed")]


def test_step_that_keeps_crashing_ends_step_crashed(cast, time_machine, settings):
    settings.AUXOT_STEP_MAX_ATTEMPTS = 2
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    item = _item(wf)
    step = wf.steps.get()
    for attempt in (1, 2):
        assert work_item_claim(work_id=item.pk, now=timezone.now()) is not None
        StepRun.objects.create(work_item=item, step=step, attempt=attempt, status="running",
                               started_at=timezone.now())
        time_machine.move_to(timezone.now() + timedelta(seconds=120))
    item = _run(item)
    assert item.status == "failed"
    assert item.error["code"] == "step_crashed"


def test_completed_steps_are_not_rerun_after_crash(cast, time_machine):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                   ("transform", {"expression": "previous"})])
    item = _item(wf)
    work_item_process(work_id=item.pk, drain_seconds=0)
    assert StepRun.objects.filter(work_item=item).count() == 2
    work_item_process(work_id=item.pk, drain_seconds=0)  # a duplicate task does nothing
    assert StepRun.objects.filter(work_item=item).count() == 2


def test_lost_lease_discards_step_result(cast, monkeypatch):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    item = _item(wf)
    from workflows.kinds.transform import Transform

    real = Transform.execute

    def cancel_meanwhile(self, ctx):
        WorkItem.objects.filter(pk=item.pk).update(status="failed", lease_token="",
                                                   next_run_at=None)
        return real(self, ctx)

    monkeypatch.setattr(Transform, "execute", cancel_meanwhile)
    item = _run(item)
    assert item.status == "failed"
    assert StepRun.objects.get(work_item=item).status == "discarded"


def test_drain_runs_other_due_items(cast):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    items = [_item(wf) for _ in range(3)]
    assert work_item_process(work_id=items[0].pk, drain_seconds=5) == 3
    assert set(WorkItem.objects.values_list("status", flat=True)) == {"completed"}


def test_wake_adds_no_drain_while_one_is_waiting(cast):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    _item(wf)
    OrmQ.objects.all().delete()
    assert work_items_wake() == 1
    assert work_items_wake() == 0  # one drain waits on the broker already
    assert OrmQ.objects.count() == 1


@pytest.mark.parametrize("config", [{}, {"expression": 3}, {"expression": "a.["}])
def test_transform_config_validation(config):
    from django.core.exceptions import ValidationError

    from workflows.kinds import kind_get

    with pytest.raises(ValidationError):
        kind_get("transform").validate_config(config)


@pytest.mark.parametrize("config", [{}, {"seconds": -1}, {"seconds": "5"}, {"seconds": True}])
def test_delay_config_validation(config):
    from django.core.exceptions import ValidationError

    from workflows.kinds import kind_get

    with pytest.raises(ValidationError):
        kind_get("delay").validate_config(config)


def test_engine_query_count_for_a_two_step_item_is_pinned(cast, django_assert_num_queries):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                   ("transform", {"expression": "previous"})])
    item = _item(wf)
    # claim, load item (+workflow, org), steps, attempts; then both pure steps together: the
    # first attempt row under the item's lock, committed before the steps run (savepoint,
    # lock, insert, release: a worker whose lease ran out inserts nothing); savepoint, lock
    # the held item, item finished, audit, that attempt's result, the second attempt row,
    # release. Was 20 while every step had its own lease update, attempt INSERT and
    # transaction, and the finish a third one; the same statements serve a whole batch of
    # items (test_engine_batch). No provider-ticket query for a workflow without agent
    # steps; no org query.
    with django_assert_num_queries(15):
        work_item_process(work_id=item.pk, drain_seconds=0)
