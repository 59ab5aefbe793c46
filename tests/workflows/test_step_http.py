"""The http step: requests built from expressions, secrets from the organization,
retries as backoff waits (no worker held), Retry-After, no retry on other 4xx."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_q.models import OrmQ

from auxot.secrets import secret_create
from tests.conftest import make_workflow
from tests.fakeserver import Reply
from workflows.batch import work_item_process
from workflows.models import Step, StepRun
from workflows.presenters import work_item_view
from workflows.services import work_item_create
from workflows.wake import work_items_wake


def _run(item):
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return item


def _http(server, **extra):
    return {"method": "POST", "url": f"{server.url}/hook",
            "headers": {"X-Ticket": "input.ticket"}, "body": "{customer: input.customer}",
            **extra}


def test_http_step_sends_built_request_and_stores_response(cast, fake_server):
    secret_create(org=cast.org_a, name="CRM_TOKEN", value="s3cret-value",
                  allowed_hosts=["127.0.0.1"])
    fake_server.script = [Reply(201, {"id": 7}, {"ETag": "abc", "X-Other": "no"})]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server, secret_headers={
        "Authorization": {"secret": "CRM_TOKEN", "prefix": "Bearer "}}))])
    item = _run(work_item_create(workflow=wf, input={"ticket": "T-1", "customer": "Acme"}))
    assert item.status == "completed"
    assert item.output == {"status": 201, "json": {"id": 7},
                           "headers": {"content-type": "application/json", "etag": "abc"}}
    [request] = fake_server.requests
    assert request["json"] == {"customer": "Acme"}
    assert request["headers"]["X-Ticket"] == "T-1"
    assert request["headers"]["Authorization"] == "Bearer s3cret-value"
    assert request["headers"]["Idempotency-Key"] == f"{item.pk}:1"
    assert "s3cret" not in str(Step.objects.get(workflow=wf).config)


def test_5xx_waits_in_backoff_then_retries_with_same_idempotency_key(
        cast, fake_server, time_machine):
    fake_server.script = [Reply(503, {"busy": True})]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server))])
    item = _run(work_item_create(workflow=wf, input={"ticket": "T", "customer": "C"}))
    assert item.status == "running"
    assert item.waiting_on == "backoff"
    assert item.lease_token == ""  # no worker held during the backoff
    body = work_item_view(item).body
    assert body["waiting_on"]["kind"] == "backoff"
    assert body["waiting_on"]["attempt"] == 1
    assert "Retrying step 1 'http 1'" in body["diagnosis"]
    assert "HTTP 503" in body["diagnosis"]
    assert "attempt 1 of 3" in body["diagnosis"]
    time_machine.move_to(timezone.now() + timedelta(seconds=400))
    OrmQ.objects.all().delete()  # earlier drains were consumed
    assert work_items_wake() == 1
    item = _run(item)
    assert item.status == "completed"
    keys = {r["headers"]["Idempotency-Key"] for r in fake_server.requests}
    assert keys == {f"{item.pk}:1"}
    assert list(StepRun.objects.filter(work_item=item).values_list("attempt", "status")) == [
        (1, "failed"), (2, "completed")]
    assert work_item_view(item).body["steps"][0]["attempts"] == 2


def test_retry_after_is_honoured(cast, fake_server):
    fake_server.script = [Reply(429, {}, {"Retry-After": "120"})]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server))])
    before = timezone.now()
    item = _run(work_item_create(workflow=wf, input={}))
    assert item.waiting_on == "backoff"
    assert item.next_run_at >= before + timedelta(seconds=119)


def test_client_error_is_not_retried(cast, fake_server):
    fake_server.script = [Reply(404, {"error": "nope"})]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server))])
    item = _run(work_item_create(workflow=wf, input={}))
    assert item.status == "failed"
    assert item.error["code"] == "http_error"
    assert "404" in item.error["message"]
    assert len(fake_server.requests) == 1


def test_retries_exhausted_fail_with_clear_code(cast, fake_server, time_machine):
    fake_server.script = [Reply(500), Reply(500)]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server))])
    Step.objects.filter(workflow=wf).update(max_attempts=2)
    item = _run(work_item_create(workflow=wf, input={}))
    time_machine.move_to(timezone.now() + timedelta(seconds=400))
    item = _run(item)
    assert item.status == "failed"
    assert item.error["code"] == "http_retries_exhausted"
    assert "2 attempts" in item.error["message"]


def test_connection_refused_is_retried(cast, time_machine):
    wf = make_workflow(cast.org_a, [("http", {"url": "http://127.0.0.1:9/x"})])
    item = _run(work_item_create(workflow=wf, input={}))
    assert item.waiting_on == "backoff"
    assert "ConnectionError" in item.waiting_detail["reason"]


def test_missing_secret_fails_without_sending(cast, fake_server):
    wf = make_workflow(cast.org_a, [("http", _http(fake_server, secret_headers={
        "Authorization": {"secret": "NOT_THERE"}}))])
    item = _run(work_item_create(workflow=wf, input={}))
    assert item.error["code"] == "missing_secret"
    assert "NOT_THERE" in item.error["message"]
    assert fake_server.requests == []


@pytest.mark.parametrize("config", [
    {"url": "ftp://x"},
    {"url": "https://x", "url_expression": "input.u"},
    {"url": "https://x", "headers": {"A": "input.["}},
    {"url": "https://x", "secret_headers": {"Authorization": "Bearer literal-secret"}},
    {"url": "https://x", "method": "TRACE"},
    {"url": "https://x", "timeout_seconds": 0},
])
def test_bad_http_config_is_refused_when_saved(cast, config):
    wf = make_workflow(cast.org_a, [])
    step = Step(workflow=wf, position=1, name="Call", kind="http", config=config)
    with pytest.raises(ValidationError):
        step.full_clean()


@pytest.mark.parametrize("status", [404, 503])
def test_a_urls_tokens_stay_out_of_the_steps_errors(cast, fake_server, status):
    """A chat service's webhook (the token in its path) as the target: what the poll says of a
    failure or a retry names the host and route, not the token."""
    fake_server.script = [Reply(status, {})]
    url = f"{fake_server.url}/services/T0AB12/B0CD34/xoxPathT0ken9?sig=q5ecretQ"
    wf = make_workflow(cast.org_a, [("http", {"method": "POST", "url": url})])
    item = _run(work_item_create(workflow=wf, input={}))
    body = work_item_view(item).body
    told = str(item.error) + body["diagnosis"] + str(body["steps"])
    assert f"{fake_server.url}/services/REDACTED/REDACTED/REDACTED?sig=REDACTED" in told
    assert "xoxPathT0ken9" not in told and "q5ecretQ" not in told


def test_a_urls_tokens_stay_out_of_a_connection_failure(cast):
    wf = make_workflow(cast.org_a, [("http", {"url": "http://127.0.0.1:9/hooks/xoxPathT0ken9"})])
    item = _run(work_item_create(workflow=wf, input={}))
    body = work_item_view(item).body
    assert "http://127.0.0.1:9/hooks/REDACTED" in body["diagnosis"], body["diagnosis"]
    assert "xoxPathT0ken9" not in body["diagnosis"] + str(body["steps"])


def test_a_retried_step_says_so_in_the_poll_and_each_attempt_keeps_its_own_code(
        cast, fake_server, time_machine):
    """An attempt whose backoff ran out was stored with the code `retrying` (a status, not
    what failed), and meanwhile the poll's step row said `waiting` with no error. Now the row
    is `retrying` with the next attempt's number and time and the failed attempt's error;
    the attempt keeps `http_unavailable`; the last carries the step's real code."""
    fake_server.script = [Reply(503), Reply(502), Reply(500)]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server))])
    Step.objects.filter(workflow=wf).update(max_attempts=3)
    item = _run(work_item_create(workflow=wf, input={}))
    row = work_item_view(item).body["steps"][0]
    assert row["status"] == "retrying"
    assert row["attempts"] == 1 and row["next_attempt"] == 2
    assert row["next_attempt_at"] == item.waiting_detail["until"]
    assert row["error"]["code"] == "http_unavailable"
    assert "HTTP 503" in row["error"]["message"]
    time_machine.move_to(timezone.now() + timedelta(seconds=400))
    item = _run(item)
    row = work_item_view(item).body["steps"][0]
    assert (row["status"], row["next_attempt"], row["attempts"]) == ("retrying", 3, 2)
    assert "HTTP 502" in row["error"]["message"]
    time_machine.move_to(timezone.now() + timedelta(seconds=400))
    item = _run(item)
    assert item.status == "failed" and item.error["code"] == "http_retries_exhausted"
    row = work_item_view(item).body["steps"][0]
    assert row["status"] == "failed" and row["error"]["code"] == "http_retries_exhausted"
    assert "next_attempt" not in row
    codes = list(StepRun.objects.filter(work_item=item).order_by("attempt")
                 .values_list("error__code", flat=True))
    assert codes == ["http_unavailable", "http_unavailable", "http_retries_exhausted"]


def test_attempts_lowered_while_a_step_waits_to_retry_fail_it_as_retries_exhausted(
        cast, fake_server, time_machine):
    """It failed as `step_crashed`, 'its worker stopped each time': no worker had."""
    fake_server.script = [Reply(503)]
    wf = make_workflow(cast.org_a, [("http", _http(fake_server))])
    Step.objects.filter(workflow=wf).update(max_attempts=3)
    item = _run(work_item_create(workflow=wf, input={}))
    assert item.waiting_on == "backoff"
    Step.objects.filter(workflow=wf).update(max_attempts=1)
    time_machine.move_to(timezone.now() + timedelta(seconds=400))
    item = _run(item)
    assert item.status == "failed"
    assert item.error["code"] == "http_retries_exhausted"
    assert "Gave up after 1 attempts; last: HTTP 503" in item.error["message"]
    assert len(fake_server.requests) == 1
