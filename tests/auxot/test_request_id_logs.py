"""X-Request-Id (kept, validated, made, echoed, carried to the work item, its logs and its
callback) and the JSON log line shape."""

import json
import logging

import pytest
from django.test import override_settings

from auxot.logs import ContextFilter, JsonFormatter, log_context
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from tests.conftest import trigger
from workflows.batch import work_item_process
from workflows.models import WorkItem

pytestmark = pytest.mark.django_db


def test_caller_request_id_is_echoed_and_stored_on_the_work_item(api, intake_a, member_token):
    response = trigger(api, intake_a.pk, member_token, HTTP_X_REQUEST_ID="deploy-42.abc")
    assert response.status_code == 202
    assert response["X-Request-Id"] == "deploy-42.abc"
    assert WorkItem.objects.get(pk=response.json()["work_id"]).request_id == "deploy-42.abc"


def test_missing_request_id_gets_a_fresh_one_each_time(api, intake_a, member_token):
    first = trigger(api, intake_a.pk, member_token)["X-Request-Id"]
    second = trigger(api, intake_a.pk, member_token)["X-Request-Id"]
    assert len(first) == 32 and int(first, 16) >= 0 and first != second


@pytest.mark.parametrize("bad", ["x" * 201, "has space", "tab\there", "caf\u00e9"])
def test_invalid_request_id_is_replaced_not_echoed(api, intake_a, member_token, bad):
    response = trigger(api, intake_a.pk, member_token, HTTP_X_REQUEST_ID=bad)
    assert response.status_code == 202
    assert response["X-Request-Id"] != bad and len(response["X-Request-Id"]) == 32
    assert WorkItem.objects.get().request_id == response["X-Request-Id"]


def test_request_id_is_on_errors_and_outside_the_api_too(api):
    response = api.post("/v1/intake/nope", HTTP_X_REQUEST_ID="r-1")
    assert response.status_code == 401 and response["X-Request-Id"] == "r-1"
    assert api.get("/healthz", HTTP_X_REQUEST_ID="r-2")["X-Request-Id"] == "r-2"


def test_the_request_line_names_the_caller_as_the_audit_rows_do(api, intake_a, member_token,
                                                                 settings, caplog):
    """Behind the README's nginx, gunicorn's access log says 127.0.0.1 for everyone: the
    request's own line carries the address the work item and audit rows record."""
    settings.AUXOT_TRUSTED_PROXIES = ["127.0.0.1"]
    with caplog.at_level(logging.INFO, logger="auxot.request"):
        response = trigger(api, intake_a.pk, member_token, REMOTE_ADDR="127.0.0.1",
                           HTTP_X_FORWARDED_FOR="10.9.9.9, 198.51.100.7")
        refused = trigger(api, intake_a.pk, "user.nope", REMOTE_ADDR="::ffff:203.0.113.5")
    assert refused.status_code == 401
    lines = [r for r in caplog.records if getattr(r, "event", "") == "http.request"]
    assert [r.client_ip for r in lines] == ["198.51.100.7", "203.0.113.5"]
    item = WorkItem.objects.get(pk=response.json()["work_id"])
    assert item.created_by_ip == "198.51.100.7"


def test_work_item_log_lines_carry_the_request_and_work_ids(api, cb_intake, member_token,
                                                           caplog):
    response = trigger(api, cb_intake.pk, member_token, HTTP_X_REQUEST_ID="trace-7")
    work_id = response.json()["work_id"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workflows.engine"):
        work_item_process(work_id=work_id, drain_seconds=0)
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "work_item.finished"]
    ContextFilter().filter(record)
    assert record.request_id == "trace-7" and record.work_id == work_id
    assert record.intake_id == str(cb_intake.pk) and record.status == "completed"


def test_callback_carries_the_request_id_header(api, receiver, cb_intake, member_token):
    receiver.expect_request("/hook").respond_with_data("ok")
    response = trigger(api, cb_intake.pk, member_token, HTTP_X_REQUEST_ID="cb-trace-1")
    item = WorkItem.objects.get(pk=response.json()["work_id"])
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    delivery = callback_delivery_create(work_item=item)
    callback_delivery_process(delivery_id=delivery.pk)
    [(request, _)] = receiver.log
    assert request.headers["X-Request-Id"] == "cb-trace-1"


def _json_line(record: logging.LogRecord) -> dict:
    ContextFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_a_500s_log_line_names_the_request_without_its_query_string(rf):
    """Django's request logger puts the request itself in the record (`extra`), and its
    text is the full path: `?token=…` went to the log, which the request line never logs."""
    request = rf.post("/v1/intake/abc?token=QUERYSECRET&x=1")
    record = logging.getLogger("django.request").makeRecord(
        "django.request", logging.ERROR, __file__, 1, "Internal Server Error: %s",
        (request.path,), None, extra={"status_code": 500, "request": request})
    line = _json_line(record)
    assert line["request"] == "POST /v1/intake/abc" and line["status_code"] == 500
    assert "QUERYSECRET" not in json.dumps(line)


def test_json_log_line_has_the_documented_fields():
    logger = logging.getLogger("auxot.test")
    with log_context(request_id="rid-1", intake_id="i-1", work_id="w-1", key_lookup_id="k1"):
        record = logger.makeRecord("auxot.test", logging.INFO, __file__, 1, "done %s", ("x",),
                                   None, extra={"event": "http.request", "status": 202,
                                                "duration_ms": 3.5})
        line = _json_line(record)
    assert line["time"].endswith("Z") and line["level"] == "INFO"
    assert line["event"] == "http.request" and line["message"] == "done x"
    assert (line["request_id"], line["intake_id"], line["work_id"], line["key_lookup_id"]) == (
        "rid-1", "i-1", "w-1", "k1")
    assert line["status"] == 202 and line["duration_ms"] == 3.5


def test_json_log_line_puts_a_traceback_in_one_field():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed",
                                                   (), sys.exc_info())
    line = _json_line(record)
    assert line["event"] == "x" and "ValueError: boom" in line["exception"]


@override_settings(AUXOT_REQUEST_LOG=True)
def test_request_log_line_names_ids_status_and_duration_never_the_key(
        api, intake_a, member_token, caplog):
    with caplog.at_level(logging.INFO, logger="auxot.request"):
        response = trigger(api, intake_a.pk, member_token, HTTP_X_REQUEST_ID="r-9")
    [record] = [r for r in caplog.records if r.name == "auxot.request"]
    line = _json_line(record)
    assert line["event"] == "http.request" and line["status"] == 202
    assert line["request_id"] == "r-9" and line["intake_id"] == str(intake_a.pk)
    assert line["work_id"] == response.json()["work_id"]
    assert line["key_lookup_id"] and line["key_lookup_id"] in member_token
    assert isinstance(line["duration_ms"], float)
    assert member_token not in json.dumps(line)
