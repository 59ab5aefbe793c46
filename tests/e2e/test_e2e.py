"""The tutorial's path with real processes: live server, real qcluster, HTTP all the way."""

import time

import pytest
import requests

from apikeys.services import apikey_issue
from intakes.services import intake_create
from tests.conftest import GREETING, make_workflow
from tests.processes import wait_for
from workflows.models import StepRun, WorkItem

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def setup(live_server, cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": GREETING}),
                                          ("delay", {"seconds": 3})], name="Tutorial")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="tutorial")
    token = apikey_issue(org=cast.org_a, label="e2e", user=cast.member_a).token
    base = f"{live_server.url}/v1/intake/{intake.pk}"
    return base, {"Authorization": f"Bearer {token}"}


def _poll(url, headers):
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_tutorial_path_pending_running_completed(setup, clusters):
    base, headers = setup
    response = requests.post(base, json={"ticket_id": "SUP-1042", "customer": "Acme Corp"},
                             headers=headers, timeout=10)
    assert response.status_code == 202
    poll_url = response.headers["Location"]
    first = _poll(poll_url, headers)
    assert first.json()["status"] == "pending"  # 202 means queued, not done
    assert "qcluster" in first.json()["diagnosis"]
    clusters()
    seen = []

    def settled():
        body = _poll(poll_url, headers).json()
        seen.append(body["status"])
        return body if body["status"] in ("completed", "failed") else None

    body = wait_for(settled, timeout=30, interval=0.2, what="completed")
    assert body["status"] == "completed"
    assert body["output"] == {"greeting": "Hello, Acme Corp", "n": None}
    assert "running" in seen
    assert [s["status"] for s in body["steps"]] == ["completed", "completed"]


def test_sigkilled_worker_loses_nothing(setup, clusters):
    base, headers = setup
    work_id = requests.post(base, json={"customer": "K"}, headers=headers, timeout=10).json()[
        "work_id"]
    first = clusters()
    wait_for(lambda: WorkItem.objects.filter(pk=work_id, waiting_on="delay").exists(),
             timeout=20, what="the delay step to be pending")
    first.kill()
    clusters()
    item = wait_for(lambda: WorkItem.objects.filter(pk=work_id, status="completed").first(),
                    timeout=30, interval=0.2, what="completion after restart")
    assert item.output == {"greeting": "Hello, K", "n": None}
    runs = StepRun.objects.filter(work_item=item)
    assert [(r.step.position, r.status) for r in runs] == [(1, "completed"), (2, "completed")]


def test_delays_do_not_hold_workers(setup, clusters, cast):
    # 20 items x 4 s delay on 2 workers: held workers would need >= 40 s; free ones ~5 s,
    # so 25 s tells the two apart on a loaded box.
    workflow = make_workflow(cast.org_a, [("delay", {"seconds": 4})], name="Sleepy")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="sleepy")
    base, headers = setup
    url = base.rsplit("/", 1)[0] + f"/{intake.pk}"
    clusters(AUXOT_WORKERS="2")
    started = time.monotonic()
    for _ in range(20):
        assert requests.post(url, json={}, headers=headers, timeout=10).status_code == 202
    wait_for(lambda: WorkItem.objects.filter(intake=intake, status="completed").count() == 20,
             timeout=60, interval=0.2, what="20 completions")
    assert time.monotonic() - started < 25
