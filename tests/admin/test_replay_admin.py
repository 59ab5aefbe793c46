"""Replay in the admin, without a browser: the Replay button, the Failed work groups, the
bulk action's confirmation, and select-across."""

from datetime import timedelta

import pytest
from django.utils import timezone

from auxot.models import AuditEvent
from intakes.services import intake_create, intake_set_active
from tests.conftest import bearer, make_workflow
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


# Why: an auditor explains a replay from the audit log. Before: nothing recorded why (a
# cancel keeps its reason, a replay did not), on any of the four ways to replay.
WHY = "payments API down 10:05-11:05, fixed"


def _replay_each_way(client, api, cast, flow, token) -> dict[str, WorkItem]:
    """One failed item replayed by each way there is, every one giving WHY."""
    intake = intake_create(org=cast.org_a, workflow=flow, name="why")
    items = {way: _failed(flow) for way in ("api", "admin", "bulk action", "failed work")}
    WorkItem.objects.filter(pk=items["api"].pk).update(intake=intake)
    assert api.post(f"/v1/intake/{intake.pk}/work/{items['api'].pk}/replay",
                    {"reason": WHY}, format="json", **bearer(token)).status_code == 202
    client.force_login(cast.member_a)
    client.post(f"{CHANGELIST}{items['admin'].pk}/replay/", {"from": "failed_step",
                                                             "reason": f"  {WHY} "})
    client.post(CHANGELIST, {"action": "replay_selected", "confirm": "yes", "reason": WHY,
                             "_selected_action": [str(items["bulk action"].pk)]})
    WorkItem.objects.filter(pk=items["failed work"].pk).update(
        error={"code": "timeout", "message": "no", "step_position": 2})
    client.post("/admin/workflows/workitem/failed/replay/", {
        "workflow": str(flow.pk), "position": "2", "code": "timeout", "confirm": "yes",
        "reason": WHY})
    for batch in ReplayBatch.objects.all():
        replay_batch_process(batch_id=batch.pk)
    return items


def test_every_way_to_replay_keeps_why_in_the_audit_log(client, api, cast, flow,
                                                         member_token):
    items = _replay_each_way(client, api, cast, flow, member_token)
    for way, item in items.items():
        assert WorkItem.objects.filter(replay_of=item).exists(), way
        event = AuditEvent.objects.get(event="work_item.replayed", object_id=str(item.pk))
        assert event.extra["reason"] == WHY, way
        new = str(WorkItem.objects.get(replay_of=item).pk)
        event = AuditEvent.objects.get(event="work_item.created", object_id=new)
        assert event.extra["reason"] == WHY, way
    batches = ReplayBatch.objects.all()
    assert [batch.reason for batch in batches] == [WHY, WHY]
    created = AuditEvent.objects.filter(event="replay_batch.created")
    assert [event.extra["reason"] for event in created] == [WHY, WHY]
    finished = AuditEvent.objects.filter(event="replay_batch.finished").first()
    assert finished.extra["skip_reasons"] == {}
    page = client.get(f"{CHANGELIST}replay-batches/{batches[0].pk}/").content.decode()
    assert f'<span id="batch-reason">{WHY}</span>' in page


def test_a_reason_with_a_nul_is_stored_not_a_500(client, cast, flow):
    failed, bulk = _failed(flow), _failed(flow)
    client.force_login(cast.member_a)
    client.post(f"{CHANGELIST}{failed.pk}/replay/", {"reason": "api\x00down"})
    client.post(CHANGELIST, {"action": "replay_selected", "confirm": "yes",
                             "reason": "api\x00down", "_selected_action": [str(bulk.pk)]})
    replay_batch_process(batch_id=ReplayBatch.objects.get().pk)
    reasons = AuditEvent.objects.filter(event="work_item.replayed").values_list(
        "extra__reason", flat=True)
    assert list(reasons) == ["api\ufffddown"] * 2


def test_the_replay_forms_ask_why(client, cast, flow):
    failed = _failed(flow)
    client.force_login(cast.member_a)
    page = client.get(f"{CHANGELIST}{failed.pk}/change/").content.decode()
    confirm = client.post(CHANGELIST, {"action": "replay_selected",
                                       "_selected_action": [str(failed.pk)]}).content.decode()
    group = client.get("/admin/workflows/workitem/failed/replay/", {
        "workflow": str(flow.pk), "position": "2", "code": "http_status"}).content.decode()
    for text in (page, confirm, group):
        assert 'name="reason" id="replay-reason" maxlength="500"' in text


# A double click on a bulk confirmation, or a second operator confirming the same Failed
# work group before the first bulk replay got to it. Before: a second batch of the same
# items, audited as replay_batch.created with every item, whose page (where the double
# click lands) then said "Replayed: 0, Skipped: N (already replayed)".
def _group_post(client, flow, **extra):
    return client.post("/admin/workflows/workitem/failed/replay/", {
        "workflow": str(flow.pk), "position": "2", "code": "http_status", "confirm": "yes",
        **extra})


def test_a_second_bulk_replay_of_items_still_being_replayed_goes_to_the_first(
        client, cast, flow):
    items = [_failed(flow) for _ in range(3)]
    client.force_login(cast.member_a)
    first = _group_post(client, flow)
    batch = ReplayBatch.objects.get()
    client.force_login(cast.admin_a)  # another operator, or the same one clicking twice
    again = _group_post(client, flow)
    assert ReplayBatch.objects.count() == 1
    assert again.url == first.url == f"{CHANGELIST}replay-batches/{batch.pk}/"
    page = client.get(again.url).content.decode()
    assert "already being replayed" in page
    selected = [str(item.pk) for item in items]
    client.post(CHANGELIST, {"action": "replay_selected", "confirm": "yes",
                             "_selected_action": selected})
    assert ReplayBatch.objects.count() == 1
    # Items not in the running batch go in a new one, and only they.
    more = _failed(flow)
    client.post(CHANGELIST, {"action": "replay_selected", "confirm": "yes",
                             "_selected_action": [*selected, str(more.pk)]})
    assert ReplayBatch.objects.count() == 2
    assert ReplayBatch.objects.order_by("created_at").last().work_ids == [str(more.pk)]
    assert AuditEvent.objects.filter(event="replay_batch.created").count() == 2
    replay_batch_process(batch_id=batch.pk)
    # Once it is done, items it skipped (here: none) may go in a new one again.
    assert not replayable(WorkItem.objects.filter(pk__in=selected)).exists()
