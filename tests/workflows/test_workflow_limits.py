"""What one workflow may ask of the workers per work item (workflows/models.py): at most
MAX_STEPS_PER_WORKFLOW steps and MAX_STEP_ATTEMPTS attempts at a step, refused when saved
(the model and the admin's form) and capped when a step saved before runs."""

import json
import re

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.conftest import make_workflow
from tests.fakeserver import Reply
from workflows import batch
from workflows.batch import claims_run, work_item_process, work_items_claim_batch
from workflows.models import (
    MAX_STEP_ATTEMPTS,
    MAX_STEPS_PER_WORKFLOW,
    Step,
    StepRun,
    Workflow,
    WorkItem,
)
from workflows.services import work_item_create

TRANSFORM = ("transform", {"expression": "input"})


def test_a_step_with_more_attempts_than_the_limit_is_refused_when_saved(cast):
    wf = make_workflow(cast.org_a, [], name="Attempts")
    step = Step(workflow=wf, position=1, name="s", kind="transform",
                config={"expression": "input"}, max_attempts=MAX_STEP_ATTEMPTS)
    step.full_clean()
    step.max_attempts = MAX_STEP_ATTEMPTS + 1
    with pytest.raises(ValidationError, match=f"At most {MAX_STEP_ATTEMPTS}"):
        step.full_clean()


def test_a_step_saved_with_more_attempts_runs_capped(cast, fake_server):
    fake_server.script = [Reply(503, {"busy": True})]
    wf = make_workflow(cast.org_a, [("http", {"url": fake_server.url + "/flaky"})],
                       name="Flaky")
    Step.objects.filter(workflow=wf).update(max_attempts=10_000)
    assert Step.objects.get(workflow=wf).attempts == MAX_STEP_ATTEMPTS
    item = work_item_create(workflow=wf, input={})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.waiting_detail["max_attempts"] == MAX_STEP_ATTEMPTS


def test_the_step_past_the_limit_is_refused_when_saved(cast):
    wf = make_workflow(cast.org_a, [TRANSFORM] * MAX_STEPS_PER_WORKFLOW, name="Long")
    step = Step(workflow=wf, position=MAX_STEPS_PER_WORKFLOW + 1, name="one more",
                kind="transform", config={"expression": "input"})
    with pytest.raises(ValidationError, match=f"at most {MAX_STEPS_PER_WORKFLOW} steps"):
        step.full_clean()
    saved = Step.objects.filter(workflow=wf).first()
    saved.full_clean()  # editing one of them is fine


def _admin_post(client, cast, steps: int):
    client.force_login(cast.admin_a)
    page = client.get("/admin/workflows/workflow/add/").content.decode()
    data = {"org": cast.org_a.pk, "name": "Many", "slug": "many", "active": "on",
            "created_at_0": "2026-01-01", "created_at_1": "00:00:00"}
    for prefix in re.findall(r'name="([\w-]+)-TOTAL_FORMS"', page):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    data["steps-TOTAL_FORMS"] = str(steps)
    for n in range(steps):
        data.update({f"steps-{n}-position": str(n + 1), f"steps-{n}-name": f"s{n}",
                     f"steps-{n}-kind": "transform",
                     f"steps-{n}-config": json.dumps({"expression": "input"})})
    return client.post("/admin/workflows/workflow/add/", data)


def test_the_admin_refuses_more_steps_than_the_limit_in_one_save(cast, client):
    response = _admin_post(client, cast, MAX_STEPS_PER_WORKFLOW + 1)
    assert response.status_code == 200  # the form again, with the error
    assert f"Please submit at most {MAX_STEPS_PER_WORKFLOW} forms" in \
        response.content.decode().replace("&#x27;", "'")
    assert not Workflow.objects.filter(slug="many").exists()
    assert _admin_post(client, cast, MAX_STEPS_PER_WORKFLOW).status_code == 302
    assert Step.objects.filter(workflow__slug="many").count() == MAX_STEPS_PER_WORKFLOW


def test_a_workflow_saved_with_more_steps_fails_its_items_naming_the_limit(cast):
    wf = make_workflow(cast.org_a, [TRANSFORM] * (MAX_STEPS_PER_WORKFLOW + 1), name="Old")
    item = work_item_create(workflow=wf, input={"n": 1})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item = WorkItem.objects.get(pk=item.pk)
    assert item.status == WorkItem.Status.FAILED
    assert item.error["code"] == "bad_config"
    assert f"at most {MAX_STEPS_PER_WORKFLOW} run" in item.error["message"]
    assert not StepRun.objects.filter(work_item=item).exists()  # nothing ran


def test_a_claim_runs_pure_steps_for_a_while_then_hands_its_items_back(cast, monkeypatch):
    """Each transform may take a second or two of CPU (its expression budget): a batch of
    items of fifty of them held one worker for minutes, past django-q2's kill. Past
    HOLD_SECONDS (0 here) an item makes one step per claim and is handed back."""
    monkeypatch.setattr(batch, "HOLD_SECONDS", 0)
    wf = make_workflow(cast.org_a, [TRANSFORM] * 5, name="Chain")
    for n in range(3):
        work_item_create(workflow=wf, input={"n": n})
    assert not WorkItem.objects.exclude(status=WorkItem.Status.PENDING).exists()
    claims_run(work_items_claim_batch(now=timezone.now(), limit=10))
    assert StepRun.objects.count() == 1  # the first item's first step: nothing else started
    assert StepRun.objects.get().status == StepRun.Status.COMPLETED
    assert set(WorkItem.objects.values_list("lease_token", flat=True)) == {""}
    assert not WorkItem.objects.filter(next_run_at__gt=timezone.now()).exists()  # due now
    for _ in range(30):
        claims_run(work_items_claim_batch(now=timezone.now(), limit=10))
    assert set(WorkItem.objects.values_list("status", flat=True)) == {WorkItem.Status.COMPLETED}
    assert StepRun.objects.count() == 15  # one attempt per step: none crashed or repeated
    assert set(StepRun.objects.values_list("status", flat=True)) == {StepRun.Status.COMPLETED}


# Each way a step's output reaches the item: a pure chain in one claim, outputs loaded from
# the database by a later claim (after the delay, which passes `previous` on: it counts
# too), and a step with outside effects. (steps, the position that fails)
OUTPUT_PATHS = {
    "transforms in one claim": ([TRANSFORM] * 5, 4),
    "after a delay": ([TRANSFORM, TRANSFORM, ("delay", {"seconds": 0.001}), TRANSFORM], 4),
    "an http step": ([TRANSFORM, TRANSFORM, ("http", {"url": "{server}/hook"})], 3),
}


@pytest.mark.parametrize("path", list(OUTPUT_PATHS))
def test_an_items_step_outputs_together_are_bounded(cast, settings, fake_server, path):
    settings.AUXOT_ITEM_OUTPUT_MAX_CHARS = 2500  # three outputs of ~710 fit, a fourth not
    fake_server.script = [Reply(200, {"text": "y" * 1000})]
    steps, failing = OUTPUT_PATHS[path]
    steps = [(kind, {k: v.format(server=fake_server.url) if k == "url" else v
                     for k, v in config.items()}) for kind, config in steps]
    wf = make_workflow(cast.org_a, steps, name="Big")
    item = work_item_create(workflow=wf, input={"text": "x" * 700})
    for _ in range(5):
        WorkItem.objects.filter(pk=item.pk, next_run_at__isnull=False).update(
            next_run_at=timezone.now())  # the delay's end, without waiting for it
        work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.error["code"]) == ("failed", "bad_output")
    assert "past 2,500 (AUXOT_ITEM_OUTPUT_MAX_CHARS)" in item.error["message"]
    assert item.error["step_position"] == failing
    stored = StepRun.objects.filter(work_item=item, status=StepRun.Status.COMPLETED)
    assert stored.count() == failing - 1
    assert sum(len(json.dumps(run.output)) for run in stored) <= 2500
