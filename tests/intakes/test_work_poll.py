"""GET /v1/intake/{id}/work/{work_id}: status, progress, Retry-After and a diagnosis."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import bearer, trigger
from workflows.batch import work_item_process
from workflows.services import worker_heartbeat


def _poll(api, intake, token, work_id):
    return api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(token))


def test_pending_item_without_worker_says_start_qcluster(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = _poll(api, intake_a, member_token, work_id)
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "pending"
    assert response["Retry-After"] == "1"
    assert body["waiting_on"]["kind"] == "worker"
    assert "qcluster" in body["diagnosis"]
    assert [s["status"] for s in body["steps"]] == ["pending", "pending"]


def test_pending_item_with_live_worker_is_queued(api, intake_a, member_token):
    worker_heartbeat(name="w1", started_at=timezone.now())
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    body = _poll(api, intake_a, member_token, work_id).json()
    assert body["waiting_on"]["kind"] == "queue"


@pytest.mark.parametrize(("beat_age", "kind"), [(14, "queue"), (16, "worker")])
def test_a_worker_that_stopped_beating_is_reported_after_three_missed_beats(
        api, intake_a, member_token, settings, beat_age, kind):
    from workflows.services import worker_last_seen_cache_clear

    settings.AUXOT_HEARTBEAT_SECONDS = 5
    beat_at = timezone.now() - timedelta(seconds=beat_age)
    worker_heartbeat(name="w1", started_at=beat_at, now=beat_at)
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    worker_last_seen_cache_clear()
    assert _poll(api, intake_a, member_token, work_id).json()["waiting_on"]["kind"] == kind


def test_delayed_item_reports_delay_and_retry_after(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token, {"customer": "Acme"}).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    response = _poll(api, intake_a, member_token, work_id)
    body = response.json()
    assert body["status"] == "running"
    assert body["current_step"]["kind"] == "delay"
    assert body["waiting_on"]["kind"] == "delay"
    assert "delay" in body["diagnosis"]
    assert 1 <= int(response["Retry-After"]) <= 3
    assert [s["status"] for s in body["steps"]] == ["completed", "waiting"]
    assert body["output"] is None


def test_completed_item_has_output_and_no_retry_after(api, intake_a, member_token,
                                                      time_machine):
    work_id = trigger(api, intake_a.pk, member_token, {"customer": "Acme"}).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    time_machine.move_to(timezone.now() + timedelta(seconds=5))
    work_item_process(work_id=work_id, drain_seconds=0)
    response = _poll(api, intake_a, member_token, work_id)
    body = response.json()
    assert body["status"] == "completed"
    assert body["output"] == {"greeting": "Hello, Acme", "n": None}
    assert body["finished_at"] and body["error"] is None
    assert "Retry-After" not in response


def test_failed_item_names_step_in_diagnosis(api, cast, member_token):
    from intakes.services import intake_create
    from tests.conftest import make_workflow

    wf = make_workflow(cast.org_a, [("transform", {"expression": "input.["})], name="Bad")
    intake = intake_create(org=cast.org_a, workflow=wf, name="bad")
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    body = _poll(api, intake, member_token, work_id).json()
    assert body["status"] == "failed"
    assert body["error"]["step"] == "transform 1"
    assert "transform 1" in body["diagnosis"]


def test_poll_query_count_is_pinned(api, intake_a, member_token, django_assert_num_queries):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    # key with the intake (one SELECT); intake with its membership check and the item;
    # steps with their attempts
    with django_assert_num_queries(3):
        assert _poll(api, intake_a, member_token, work_id).status_code == 200


def test_every_step_status_the_poll_can_show_is_in_the_readme():
    """`skipped` and `retrying` were shown by the poll and said nowhere: the README's
    `steps[].status` line names every value a step row can carry."""
    import re
    from pathlib import Path

    from workflows import presenters
    from workflows.models import StepRun

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = readme.split("- `steps[].status`:", 1)[1].split("\n- ", 1)[0]
    named = set(re.findall(r"`([a-z]+)`", line))
    source = Path(presenters.__file__).read_text().split("def _step_status", 1)[1]
    shown = set(StepRun.Status.values) | set(re.findall(
        r'"([a-z]+)"', source.split("\ndef ", 1)[0]))
    assert {"pending", "skipped", "retrying", "carried"} <= shown
    assert sorted(shown - named) == []
