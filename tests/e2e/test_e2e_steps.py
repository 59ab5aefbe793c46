"""Every step kind with a real qcluster, and SIGKILLs in the middle of http and agent calls:
the item completes once and every request for the step carries the same Idempotency-Key."""

import pytest
import requests

from apikeys.services import apikey_issue
from auxot.secrets import secret_create
from intakes.services import intake_create
from tests.conftest import make_workflow
from tests.processes import wait_for
from workflows.models import Provider, Step, StepRun, WorkItem
from workflows.services import work_item_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FAST_LEASE = {"AUXOT_STEP_TIMEOUT_SECONDS": "2", "AUXOT_LEASE_GRACE_SECONDS": "1"}


@pytest.fixture
def provider(cast, fake_server):
    secret_create(org=cast.org_a, name="FAKE_AI_KEY", value="sk-e2e",
                  allowed_hosts=["127.0.0.1"])
    return Provider.objects.create(org=cast.org_a, name="local-ai", base_url=fake_server.url,
                                   model="tiny", api_key_secret="FAKE_AI_KEY",
                                   concurrency_limit=2, timeout_seconds=30)


def test_every_step_kind_runs_end_to_end(live_server, cast, fake_server, provider, clusters):
    workflow = make_workflow(cast.org_a, [
        ("transform", {"expression": "{customer: input.customer}"}),
        ("http", {"method": "POST", "url": f"{fake_server.url}/crm",
                  "body": "{customer: previous.customer}"}),
        ("approval", {"instructions": "Looks right?"}),
        ("agent", {"provider": "local-ai",
                   "prompt": "Write to {{ steps.\"transform 1\".customer }}"}),
        ("delay", {"seconds": 1}),
    ], name="Everything")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="everything")
    token = apikey_issue(org=cast.org_a, label="e2e", user=cast.member_a).token
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{live_server.url}/v1/intake/{intake.pk}"
    clusters()
    poll_url = requests.post(base, json={"customer": "Acme"}, headers=headers,
                             timeout=10).headers["Location"]

    def poll():
        return requests.get(poll_url, headers=headers, timeout=10).json()

    body = wait_for(lambda: (b := poll())["waiting_on"] and b["waiting_on"]["kind"] ==
                    "approval" and b, timeout=30, interval=0.2, what="the approval wait")
    assert "Waiting for approval at step 3" in body["diagnosis"]
    decided = requests.post(f"{poll_url}/approval", json={"decision": "approve"},
                            headers=headers, timeout=10)
    assert decided.status_code == 200, decided.text
    body = wait_for(lambda: (b := poll())["status"] in ("completed", "failed") and b,
                    timeout=30, interval=0.2, what="completion")
    assert body["status"] == "completed", body
    assert body["output"]["content"] == "echo: Write to Acme"
    assert [s["status"] for s in body["steps"]] == ["completed"] * 5
    crm, chat = fake_server.requests
    assert crm["json"] == {"customer": "Acme"}
    assert chat["headers"]["Authorization"] == "Bearer sk-e2e"


def _kill_mid_call(fake_server, clusters, item):
    fake_server.hold_first = True
    first = clusters(**FAST_LEASE)
    assert fake_server.arrived.wait(30), "the step never called the server"
    first.kill()
    fake_server.release()
    clusters(**FAST_LEASE)
    item = wait_for(lambda: WorkItem.objects.filter(pk=item.pk, status__in=[
        "completed", "failed"]).first(), timeout=40, interval=0.2, what="completion")
    assert item.status == "completed", item.error
    runs = list(StepRun.objects.filter(work_item=item).values_list("attempt", "status"))
    assert runs == [(1, "crashed"), (2, "completed")]
    keys = [r["headers"].get("Idempotency-Key") for r in fake_server.requests]
    assert len(keys) == 2
    assert set(keys) == {f"{item.pk}:1"}
    return item


def test_sigkill_mid_http_step_completes_once_with_one_idempotency_key(
        cast, fake_server, clusters):
    workflow = make_workflow(cast.org_a, [("http", {"method": "POST",
                                                    "url": f"{fake_server.url}/charge",
                                                    "body": "input"})], name="Charge")
    item = work_item_create(workflow=workflow, input={"amount": 5})
    item = _kill_mid_call(fake_server, clusters, item)
    assert item.output["json"]["got"] == {"amount": 5}


def test_sigkill_mid_agent_step_completes_once_with_one_idempotency_key(
        cast, fake_server, provider, clusters):
    workflow = make_workflow(cast.org_a, [("agent", {"provider": "local-ai",
                                                     "prompt": "Hi {{ input.name }}"})],
                             name="Ask")
    Step.objects.filter(workflow=workflow).update(timeout_seconds=2)
    item = work_item_create(workflow=workflow, input={"name": "K"})
    item = _kill_mid_call(fake_server, clusters, item)
    assert item.output["content"] == "echo: Hi K"
