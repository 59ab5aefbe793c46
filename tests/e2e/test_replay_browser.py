"""Replay in a real browser: the Failed work view, a group's bulk replay behind its
confirmation page with progress, the bulk action and the Replay button on an item."""

import pytest
from django.utils import timezone

from tests.conftest import make_workflow
from tests.e2e.test_admin_browser import _shot, browser, login  # noqa: F401  (fixtures)
from tests.processes import QCluster
from workflows.models import ReplayBatch, Step, StepRun, WorkItem

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _failed(workflow, count: int, code: str) -> list[WorkItem]:
    now = timezone.now()
    first, second = Step.objects.filter(workflow=workflow)
    items = WorkItem.objects.bulk_create([
        WorkItem(workflow=workflow, input={"n": n}, status=WorkItem.Status.FAILED,
                 created_at=now, started_at=now, finished_at=now, current_step=1,
                 error={"code": code, "message": "downstream said no", "step": second.name,
                        "step_position": second.position})
        for n in range(count)])
    StepRun.objects.bulk_create([
        StepRun(work_item=item, step=first, attempt=1, status="completed", started_at=now,
                finished_at=now, output={"n": item.input["n"]}) for item in items])
    return items


@pytest.fixture
def outage(cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{n: input.n}"}),
                                          ("transform", {"expression": "previous"})],
                             name="Sync orders")
    return workflow, _failed(workflow, 30, "http_status"), _failed(workflow, 3, "timeout")


def test_failed_work_view_and_a_confirmed_bulk_replay(login, live_server, outage):  # noqa: F811
    _workflow, big, small = outage
    cluster = QCluster().start()
    try:
        page = login("member_a")
        page.goto(f"{live_server.url}/admin/workflows/workitem/")
        page.click("text=Failed work")
        page.wait_for_selector("#failed-groups")
        assert page.inner_text("#failed-total") == "33"
        rows = page.locator("#failed-groups tbody tr")
        assert rows.count() == 2
        first = rows.nth(0).inner_text()
        assert "Sync orders" in first and "http_status" in first and "30" in first
        assert "timeout" in rows.nth(1).inner_text()
        _shot(page, "failed-work")

        rows.nth(0).locator("text=Replay 30").click()
        summary = page.inner_text("#replay-summary")
        assert "Replay 30 failed items of workflow 'Sync orders' that failed at step 2" in summary
        assert page.inner_text("#steps-to-run") == "transform 2 (transform)"
        assert "Carried, not run again: 1. transform 1" in page.content()
        assert not ReplayBatch.objects.exists()  # nothing happens before the confirmation
        page.click("input[value='Yes, replay 30 items']")

        page.wait_for_selector("#batch-status[data-status=done]", timeout=60000)
        assert page.inner_text("#batch-replayed") == "30"
        assert page.inner_text("#batch-skipped") == "0"
        replays = WorkItem.objects.filter(replay_of__in=big)
        assert replays.count() == 30
        assert {item.resumed_from_step for item in replays} == {2}

        page.goto(f"{live_server.url}/admin/workflows/workitem/failed/")
        assert page.inner_text("#failed-total") == "3"  # the replayed group is handled

        # The bulk action on the list, with its own confirmation.
        page.goto(f"{live_server.url}/admin/workflows/workitem/?status__exact=failed")
        page.check(f"input[name=_selected_action][value='{small[0].pk}']")
        page.select_option("select[name=action]", "replay_selected")
        page.click("button[name=index]")
        assert "Replay 1 failed item from the failed step?" in page.inner_text("#replay-summary")
        assert "runs transform 2; carries transform 1" in page.inner_text("#replay-groups")
        page.click("input[value='Yes, replay 1 item']")
        page.wait_for_selector("#batch-status[data-status=done]", timeout=60000)
        assert WorkItem.objects.filter(replay_of=small[0]).count() == 1

        # The Replay button on one failed item, from the start.
        page.goto(f"{live_server.url}/admin/workflows/workitem/{small[1].pk}/change/")
        page.select_option("#replay-from", "start")
        page.click("#replay-form button")
        page.wait_for_selector("text=Replay created; the original stays failed.")
        new = WorkItem.objects.get(replay_of=small[1])
        assert new.resumed_from_step == 1
        assert str(small[1].pk) in page.content()  # "Replay of <original>"
    finally:
        cluster.stop()
