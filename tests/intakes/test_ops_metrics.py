"""/metrics: off by default, protected by a token and/or networks, conventional names,
bounded labels; the worker host's exporter shares the multiprocess directory."""

import json
import os
import subprocess
import sys
import time

import pytest
import requests
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from apikeys.models import ApiKey
from auxot.broker import broker_get, task_enqueue
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from tests.conftest import trigger
from workflows.batch import work_item_process

pytestmark = pytest.mark.django_db
TOKEN = "metrics-token-0123456789"


def _scrape(api) -> dict[tuple, float]:
    response = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_off_by_default(api):
    response = api.get("/metrics")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


@override_settings(AUXOT_METRICS_TOKEN=TOKEN)
def test_metrics_without_a_token_is_401_and_with_a_wrong_one_403(api):
    response = api.get("/metrics")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    # Not the API's "Missing or invalid API key": the metrics want their own token.
    problem = response.json()
    assert (problem["code"], problem["title"]) == ("metrics_unauthorized",
                                                   "Missing metrics token")
    assert "AUXOT_METRICS_TOKEN" in api.get(problem["type"]).json()["description"]
    assert api.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 403
    assert api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@override_settings(AUXOT_METRICS_ALLOWED_NETWORKS=["10.0.0.0/8"])
def test_metrics_from_outside_the_allowed_networks_is_403(api):
    assert api.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    assert api.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200


@override_settings(AUXOT_METRICS_ALLOWED_NETWORKS=["10.0.0.0/8"])
def test_metrics_networks_read_a_dual_stack_peer_as_its_ipv4(api):
    """gunicorn bound to [::] sees an IPv4 scraper as ::ffff:10.2.3.4: the allowed IPv4
    network holds it (it was 403), the web view and the exporter alike."""
    from intakes.management.commands.metrics_exporter import metrics_app

    assert api.get("/metrics", REMOTE_ADDR="::ffff:10.2.3.4").status_code == 200
    assert api.get("/metrics", REMOTE_ADDR="::ffff:192.0.2.1").status_code == 403
    answered = []
    metrics_app({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET",
                 "REMOTE_ADDR": "::ffff:10.2.3.4"}, lambda status, headers: answered.append(status))
    assert answered == ["200 OK"]


@override_settings(AUXOT_METRICS_ALLOWED_NETWORKS=["127.0.0.1/32"])
def test_through_a_proxy_networks_alone_let_nobody_in(api):
    """Behind the README's nginx every caller has the proxy's address: an allowed network
    that holds the proxy would have let the whole internet read the metrics."""
    assert api.get("/metrics").status_code == 200  # a scraper on the host itself
    for header in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED"):
        response = api.get("/metrics", **{header: "198.51.100.7"})
        assert response.status_code == 403
        assert "AUXOT_METRICS_TOKEN" in response.json()["detail"]
    with override_settings(AUXOT_METRICS_TOKEN=TOKEN):
        assert api.get("/metrics", HTTP_X_FORWARDED_FOR="198.51.100.7",
                       HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@override_settings(AUXOT_METRICS_ALLOWED_NETWORKS=["10.0.0.0/8"], AUXOT_METRICS_TOKEN=TOKEN,
                   AUXOT_TRUSTED_PROXIES=["127.0.0.1"])
def test_metrics_networks_judge_the_peer_not_a_forwarded_address(api):
    """The API takes a trusted proxy's X-Forwarded-For as the caller's address; /metrics
    must not: a header would then pass its network allow-list."""
    response = api.get("/metrics", HTTP_X_FORWARDED_FOR="10.2.3.4",
                       HTTP_AUTHORIZATION=f"Bearer {TOKEN}")  # from 127.0.0.1, the proxy
    assert response.status_code == 403


@override_settings(AUXOT_METRICS_ALLOWED_NETWORKS=["10.0.0.0/8"], AUXOT_METRICS_TOKEN=TOKEN)
def test_metrics_with_networks_and_token_needs_both(api):
    assert api.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 401
    assert api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    assert api.get("/metrics", REMOTE_ADDR="10.2.3.4",
                   HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@override_settings(AUXOT_METRICS_TOKEN=TOKEN)
def test_a_trigger_and_its_run_show_up_under_conventional_names(
        api, receiver, cb_intake, member_token):
    receiver.expect_request("/hook").respond_with_data("ok")
    before = _scrape(api)
    work_id = trigger(api, cb_intake.pk, member_token).json()["work_id"]
    assert trigger(api, cb_intake.pk, "user.bogus").status_code == 401
    pending = _scrape(api)
    waiting = broker_get().queue_size()  # drains, not items: 0 or 1 whatever the backlog
    work_item_process(work_id=work_id, drain_seconds=0)
    from workflows.models import WorkItem

    delivery = callback_delivery_create(work_item=WorkItem.objects.get(pk=work_id))
    callback_delivery_process(delivery_id=delivery.pk)
    after = _scrape(api)

    def grew(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("auxot_triggers_total", outcome="accepted", reason="new") == 1
    assert grew("auxot_triggers_total", outcome="rejected", reason="unauthorized") == 1
    assert grew("auxot_step_duration_seconds_count", kind="transform", outcome="completed") == 1
    assert grew("auxot_work_items_finished_total", status="completed") == 1
    assert grew("auxot_callback_attempts_total", outcome="delivered") == 1
    assert _value(pending, "auxot_work_items", status="pending") == 1
    assert _value(after, "auxot_work_items", status="pending") == 0
    assert _value(pending, "auxot_broker_depth") == waiting
    for name in ("auxot_oldest_pending_age_seconds", "auxot_provider_slots_in_use",
                 "auxot_provider_queue_length", "auxot_callback_deliveries_pending",
                 "auxot_metrics_collect_errors"):
        assert (name, ()) in after, name
    assert _value(after, "auxot_metrics_collect_errors") == 0
    assert grew("auxot_http_request_duration_seconds_count", method="POST", status="2xx") >= 1
    task_enqueue(task="workflows.tasks.work_drain", arg="probe", name="probe")
    assert _value(_scrape(api), "auxot_broker_depth") == broker_get().queue_size() >= 1


@override_settings(AUXOT_METRICS_TOKEN=TOKEN)
def test_no_label_carries_an_id(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    text = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    key = ApiKey.objects.get()
    for value in (work_id, str(intake_a.pk), key.lookup_id, intake_a.name,
                  intake_a.workflow.name, intake_a.org.slug):
        assert value not in text


@override_settings(AUXOT_METRICS_TOKEN=TOKEN)
def test_unknown_rejection_codes_are_folded_into_other():
    from intakes.metrics import TRIGGERS, trigger_rejected

    before = TRIGGERS.labels(outcome="rejected", reason="other")._value.get()
    # Not one of our problem codes, however it is spelled: no series of its own.
    made_up = ["Weird Code/with spaces", "a_made_up_code", "http_999", "http_4044", ""]
    for code in made_up:
        trigger_rejected(code=code)
    assert TRIGGERS.labels(outcome="rejected", reason="other")._value.get() == before + 5
    series = {sample.labels.get("reason") for metric in TRIGGERS.collect()
              for sample in metric.samples}
    assert not series & set(made_up)
    for code in ("rate_limited", "http_404"):  # ours: counted by name
        before = TRIGGERS.labels(outcome="rejected", reason=code)._value.get()
        trigger_rejected(code=code)
        assert TRIGGERS.labels(outcome="rejected", reason=code)._value.get() == before + 1


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"} if token else {},
                            timeout=10)
    return response.status_code, response.text


@pytest.mark.e2e
def test_exporter_serves_the_counters_of_other_processes_on_the_host(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "AUXOT_METRICS_TOKEN": TOKEN,
           "DJANGO_SETTINGS_MODULE": "tests.settings"}
    worker = ("import django; django.setup(); from intakes.metrics import callback_attempted; "
              "[callback_attempted(state='failed') for _ in range(3)]")
    subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    exporter = subprocess.Popen(
        [sys.executable, "manage.py", "metrics_exporter", "--port", "0"], env=env,
        stdout=subprocess.PIPE, text=True)
    try:
        line = exporter.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}/metrics"
        assert _get(url)[0] == 401 and _get(url, "wrong-token-000000000")[0] == 403
        status, text = _get(url, TOKEN)
        assert status == 200
        assert 'auxot_callback_attempts_total{outcome="failed"} 3.0' in text
        # One connection that never finishes its request (before any authentication) does
        # not keep the next scrape from being answered; the single-threaded server waited
        # on it for as long as it stayed open.
        import socket

        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /metr")
        try:
            assert _get(url, TOKEN)[0] == 200
        finally:
            idle.close()
    finally:
        exporter.terminate()
        exporter.wait(10)


@pytest.mark.parametrize("first", [b"", b"GET /metrics HTTP/1.1\r\n"],
                         ids=["request-line", "headers"])
@pytest.mark.e2e
def test_exporter_slow_senders_hold_a_slot_for_their_deadline_only(tmp_path, first):
    """Every slot taken by a client that sends a byte at a time (each read well within the
    socket timeout), in its request line or in its headers: the deadline on the whole
    request closes them, and a scrape gets in."""
    import socket
    import threading

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "AUXOT_METRICS_TOKEN": TOKEN,
           "DJANGO_SETTINGS_MODULE": "tests.settings"}
    exporter = subprocess.Popen(
        [sys.executable, "manage.py", "metrics_exporter", "--port", "0",
         "--request-seconds", "1"], env=env, stdout=subprocess.PIPE, text=True)
    stop = threading.Event()

    def drip(port: int, first: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            try:
                sock.sendall(first)  # nothing, or a whole request line, then its headers
                while not stop.is_set():
                    sock.sendall(b"X")
                    time.sleep(0.2)
            except OSError:
                pass  # closed by the exporter: what this test expects

    try:
        port = int(exporter.stdout.readline().rsplit(":", 1)[1])
        drippers = [threading.Thread(target=drip, args=(port, first), daemon=True)
                    for _ in range(16)]
        for thread in drippers:
            thread.start()
        time.sleep(0.3)  # all 16 slots are held now
        answered = []
        for _ in range(20):
            try:
                answered.append(_get(f"http://127.0.0.1:{port}/metrics", TOKEN)[0])
                break
            except requests.RequestException:
                time.sleep(0.25)  # closed at once: every slot is taken
        assert answered == [200]
        for thread in drippers:  # each was closed by the exporter, not stopped by us
            thread.join(5)
        assert not any(thread.is_alive() for thread in drippers)
    finally:
        stop.set()
        exporter.terminate()
        exporter.wait(10)


def test_a_canceled_item_counts_as_finished_failed(cast, intake_a):
    from workflows.metrics import WORK_ITEMS_FINISHED
    from workflows.services import work_item_cancel, work_item_create

    item = work_item_create(workflow=intake_a.workflow, intake=intake_a, input={})
    before = WORK_ITEMS_FINISHED.labels(status="failed")._value.get()
    work_item_cancel(item=item, user=cast.member_a, reason="test")
    assert WORK_ITEMS_FINISHED.labels(status="failed")._value.get() == before + 1


def test_every_metric_the_code_defines_is_in_the_readmes_table_and_back():
    """The README's metrics table is what operators alert on: a metric it names that no code
    exports (or one exported but missing there) is found here, not in a silent alert."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    table = readme.split("### Metrics (Prometheus)", 1)[1].split("\n\n| metric |", 1)[1]
    table = table.split("\n\n", 1)[0]
    documented = {name for line in table.splitlines()[2:]
                  for name in re.findall(r"`(auxot_[a-z_]+)`", line.split(" | ")[0])}
    defined = {name for app in ("auxot", "intakes", "workflows")
               for path in (root / app).rglob("*.py") if "migrations" not in path.parts
               for name in re.findall(r'(?:Counter|Histogram|Gauge|_gauge)\(\s*"(auxot_[a-z_]+)"',
                                      path.read_text())}
    assert len(defined) >= 14
    assert sorted(defined - documented) == [] and sorted(documented - defined) == []


@pytest.mark.e2e
def test_exporter_with_json_logs_writes_only_json_to_stderr(tmp_path):
    """Its warning about a missing PROMETHEUS_MULTIPROC_DIR was bare text in a LOG_FORMAT=json
    stream (README: each line on stderr is one JSON object); stdout keeps the port line."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(AUXOT_METRICS_TOKEN=TOKEN, DJANGO_SETTINGS_MODULE="tests.settings",
               LOG_FORMAT="json", LOG_LEVEL="INFO")
    exporter = subprocess.Popen(
        [sys.executable, "manage.py", "metrics_exporter", "--port", "0"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(exporter.stdout.readline().rsplit(":", 1)[1])
        assert _get(f"http://127.0.0.1:{port}/metrics", TOKEN)[0] == 200
    finally:
        exporter.terminate()
        exporter.wait(10)
    lines = [line for line in exporter.stderr.read().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # a bare text line fails here
    messages = [record["message"] for record in records]
    assert any("PROMETHEUS_MULTIPROC_DIR is not set" in m for m in messages), messages
    assert any(f"serving /metrics on 127.0.0.1:{port}" in m for m in messages), messages
    assert {record["level"] for record in records} <= {"INFO", "WARNING"}
