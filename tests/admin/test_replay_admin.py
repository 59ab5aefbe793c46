"""Replay in the admin, without a browser: the Replay button, the Failed work groups, the
bulk action's confirmation, and select-across."""

from datetime import timedelta

import pytest
from django.utils import timezone

from intakes.services import intake_create, intake_set_active
from tests.conftest import make_workflow
from workflows.models import ReplayBatch, StepRun, Workflow, WorkItem
from workflows.replay import (
    failed_work_groups,
    replay_batch_create,
    replay_batch_process,
    replayable,
    work_item_replay,
)
from workflows.services import work_item_cancel, work_item_create

CHANGELIST = "/admin/workflows/workitem/"


def _failed(workflow, code="http_status", position=2, when=None) -> WorkItem:
    item = work_item_create(workflow=workflow, input={"n": 1})
    when = when or timezone.now()
    steps = list(workflow.steps.all())
    WorkItem.objects.filter(pk=item.pk).update(
        status="failed", finished_at=when, next_run_at=None, current_step=position - 1,
        error={"code": code, "message": "no", "step": steps[position - 1].name,
               "step_position": position})
    StepRun.objects.create(work_item=item, step=steps[0], attempt=1, status="completed",
                           started_at=when, finished_at=when, output={"n": 1})
    item.refresh_from_db()
    return item


@pytest.fixture
def flow(cast):
    return make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                      ("transform", {"expression": "previous"})], name="Two")


def test_replay_button_only_on_failed_items_for_those_who_may(client, cast, flow):
    failed, pending = _failed(flow), work_item_create(workflow=flow, input={})
    client.force_login(cast.member_a)
    page = client.get(f"{CHANGELIST}{failed.pk}/change/").content.decode()
    assert 'id="replay-form"' in page
    assert "from step 2 'transform 2' (carry 1 completed step)" in page
    pending_page = client.get(f"{CHANGELIST}{pending.pk}/change/").content.decode()
    assert 'id="replay-form"' not in pending_page
    client.force_login(cast.auditor_a)
    page = client.get(f"{CHANGELIST}{failed.pk}/change/").content.decode()
    assert 'id="replay-form"' not in page
    response = client.post(f"{CHANGELIST}{failed.pk}/replay/")
    assert response.status_code == 403
    assert not WorkItem.objects.filter(replay_of=failed).exists()


def test_admin_replay_links_both_ways_and_keeps_the_original_failed(client, cast, flow):
    failed = _failed(flow)
    client.force_login(cast.member_a)
    response = client.post(f"{CHANGELIST}{failed.pk}/replay/", {"from": "failed_step"})
    new = WorkItem.objects.get(replay_of=failed)
    assert response.url == f"{CHANGELIST}{new.pk}/change/"
    assert new.resumed_from_step == 2
    assert StepRun.objects.get(work_item=new).status == "carried"
    failed.refresh_from_db()
    assert failed.status == "failed"
    original_page = client.get(f"{CHANGELIST}{failed.pk}/change/").content.decode()
    assert f"{CHANGELIST}{new.pk}/change/" in original_page
    assert f"{CHANGELIST}{failed.pk}/change/" in client.get(
        f"{CHANGELIST}{new.pk}/change/").content.decode()


def test_failed_work_groups_count_and_leave_out_replayed_canceled_and_old(cast, flow):
    now = timezone.now()
    early = _failed(flow, when=now - timedelta(hours=5))
    _failed(flow, when=now - timedelta(hours=1))
    _failed(flow, code="timeout")
    _failed(flow, when=now - timedelta(days=30))  # outside the window
    work_item_replay(item=_failed(flow), user=cast.member_a)  # handled already
    canceled = work_item_create(workflow=flow, input={})
    work_item_cancel(item=canceled, user=cast.member_a)
    other = make_workflow(cast.org_b, [("transform", {"expression": "input"}),
                                       ("transform", {"expression": "input"})], name="B")
    _failed(other)
    groups = failed_work_groups(org_ids=[cast.org_a.pk], since=now - timedelta(days=7))
    assert [(g["workflow"], str(g["position"]), g["code"], g["count"]) for g in groups] == [
        ("Two", "2", "http_status", 2), ("Two", "2", "timeout", 1)]
    assert groups[0]["first"] == early.finished_at


def test_bulk_action_confirms_first_then_stores_one_batch(client, cast, flow):
    items = [_failed(flow) for _ in range(3)]
    completed = work_item_create(workflow=flow, input={})
    WorkItem.objects.filter(pk=completed.pk).update(status="completed")
    client.force_login(cast.member_a)
    selected = [str(item.pk) for item in items] + [str(completed.pk)]
    page = client.post(CHANGELIST, {"action": "replay_selected", "_selected_action": selected})
    text = page.content.decode()
    assert "Replay 3 failed items from the failed step?" in text
    assert "1 selected item cannot be replayed" in text
    assert "3 of 'Two' failed at 'transform 2': runs transform 2; carries " \
           "transform 1" in text
    assert not ReplayBatch.objects.exists()
    response = client.post(CHANGELIST, {"action": "replay_selected", "confirm": "yes",
                                        "_selected_action": selected})
    batch = ReplayBatch.objects.get()
    assert response.url == f"{CHANGELIST}replay-batches/{batch.pk}/"
    assert sorted(batch.work_ids) == sorted(str(item.pk) for item in items)
    assert batch.created_by == cast.member_a
    progress = client.get(response.url).content.decode()
    assert 'data-status="running"' in progress and "0 of 3 handled" in progress


def test_select_across_replays_the_filtered_list(client, cast, flow):
    items = [_failed(flow) for _ in range(4)]
    work_item_create(workflow=flow, input={})  # pending: not in the filtered list
    client.force_login(cast.member_a)
    response = client.post(f"{CHANGELIST}?status__exact=failed", {
        "action": "replay_selected", "confirm": "yes", "select_across": "1",
        "_selected_action": [str(items[0].pk)]})
    assert response.status_code == 302
    assert sorted(ReplayBatch.objects.get().work_ids) == sorted(str(i.pk) for i in items)


def test_group_confirmation_says_how_many_and_which_steps(client, cast, flow):
    for _ in range(2):
        _failed(flow)
    client.force_login(cast.member_a)
    page = client.get("/admin/workflows/workitem/failed/replay/", {
        "workflow": str(flow.pk), "position": "2", "code": "http_status"}).content.decode()
    assert "Replay 2 failed items of workflow 'Two' that failed at step 2" in page
    assert "Carried, not run again: 1. transform 1" in page
    assert '<li value="2">transform 2 (transform)</li>' in page
    start = client.get("/admin/workflows/workitem/failed/replay/", {
        "workflow": str(flow.pk), "position": "2", "code": "http_status", "from": "start"})
    assert "new</strong> idempotency keys" in start.content.decode()
    assert not ReplayBatch.objects.exists()


# Every reason an item is not replayed, and each admin path that must agree on it. Before:
# the admin replayed (one item, the bulk action, a Failed work group) the failed work of a
# DEACTIVATED intake, which its callers could not poll (404) while its steps and callback
# ran; and Failed work counted items of a deactivated workflow that its replay then skipped.
def _refused(cast, flow) -> dict[str, WorkItem]:
    def on(workflow, intake=None):
        item = _failed(workflow)
        if intake is not None:
            WorkItem.objects.filter(pk=item.pk).update(intake=intake)
        return WorkItem.objects.get(pk=item.pk)

    off_intake = intake_create(org=cast.org_a, workflow=flow, name="closed")
    off_workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                              ("transform", {"expression": "input"})],
                                 name="Off")
    items = {"intake deactivated": on(flow, off_intake),
             "workflow deactivated": on(off_workflow),
             "removed by retention": on(flow), "already replayed": on(flow),
             "canceled": on(flow)}
    intake_set_active(intake=off_intake, active=False)
    Workflow.objects.filter(pk=off_workflow.pk).update(active=False)
    WorkItem.objects.filter(pk=items["removed by retention"].pk).update(
        redacted_at=timezone.now())
    work_item_replay(item=items["already replayed"], user=cast.member_a)
    WorkItem.objects.filter(pk=items["canceled"].pk).update(
        error={"code": "canceled", "message": "Canceled.", "step_position": 2})
    return {reason: WorkItem.objects.get(pk=item.pk) for reason, item in items.items()}


def test_every_refused_item_is_refused_alike_by_each_admin_path(client, cast, flow):
    live_intake = intake_create(org=cast.org_a, workflow=flow, name="open")
    replayed_ok = [_failed(flow), _failed(flow)]  # no intake (Run (new task)), and an intake
    WorkItem.objects.filter(pk=replayed_ok[1].pk).update(intake=live_intake)
    refused = _refused(cast, flow)
    already = WorkItem.objects.get(replay_of=refused["already replayed"])
    ids = [item.pk for item in [*replayed_ok, *refused.values()]]
    # Failed work and the bulk action's count: only the two that replay.
    groups = failed_work_groups(org_ids=[cast.org_a.pk],
                                since=timezone.now() - timedelta(days=1))
    assert sum(group["count"] for group in groups) == 2
    assert set(replayable(WorkItem.objects.filter(pk__in=ids))) == set(replayed_ok)
    client.force_login(cast.member_a)
    for reason, item in refused.items():
        page = client.get(f"{CHANGELIST}{item.pk}/change/").content.decode()
        assert 'id="replay-form"' not in page, reason
        client.post(f"{CHANGELIST}{item.pk}/replay/", {"from": "failed_step"})
        assert list(WorkItem.objects.filter(replay_of=item)) == (
            [already] if reason == "already replayed" else []), reason
    batch = replay_batch_create(org=cast.org_a, work_ids=ids, user=cast.member_a)
    replay_batch_process(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.replayed == 2
    assert batch.skip_reasons == {reason: 1 for reason in refused}
