"""The callback dispatcher stops cleanly: `manage.py callbacks` and the one inside `qcluster`
end within their grace period on SIGTERM, an attempt in flight finishes (or its lease is
released at once when it outlives the grace), and nothing is sent twice."""

import json
import signal
import threading

import pytest

from intakes.models import CallbackAttempt, CallbackDelivery
from intakes.services import intake_create
from tests.conftest import make_workflow
from tests.processes import CallbackDispatcher, wait_for
from workflows.batch import work_item_process
from workflows.models import WorkerHeartbeat
from workflows.services import work_item_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
MARGIN = 30  # generous: the machine may be busy; only the grace bound itself matters
ENV = {"AUXOT_CALLBACK_ALLOW_HTTP": "1", "AUXOT_CALLBACK_TIMEOUT_SECONDS": "60"}


def _held_delivery(cast, fake_server) -> CallbackDelivery:
    """A finished item whose callback the receiver will hold until `release()`."""
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{echo: input}"})],
                             name="Echo")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="held",
                           callback_url=f"{fake_server.url}/hook")
    item = work_item_create(workflow=workflow, intake=intake, input={"n": 1})
    work_item_process(work_id=item.pk, drain_seconds=0)
    fake_server.hold_first = True
    return wait_for(lambda: CallbackDelivery.objects.filter(work_item=item).first(),
                    timeout=10, what="the delivery row")


def _dispatcher(**env) -> CallbackDispatcher:
    return CallbackDispatcher(**ENV, **env).start()


def _exit(process, grace: float) -> int:
    wait_for(lambda: process.proc.poll() is not None, timeout=grace + MARGIN, interval=0.1,
             what="the process to exit")
    return process.proc.returncode


def test_sigterm_lets_the_attempt_in_flight_finish(cast, fake_server):
    delivery = _held_delivery(cast, fake_server)
    dispatcher = _dispatcher(AUXOT_CALLBACK_GRACE_SECONDS="60")
    try:
        assert fake_server.arrived.wait(30), "the dispatcher never called the receiver"
        dispatcher.signal(signal.SIGTERM)
        fake_server.release()  # answers after the signal: the attempt still completes
        assert _exit(dispatcher, 60) == 0
    finally:
        dispatcher.stop()
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 1
    assert len(fake_server.requests) == 1
    assert b"Traceback" not in dispatcher.proc.stderr.read()


def test_an_attempt_past_the_grace_is_released_and_goes_out_again_once(cast, fake_server):
    delivery = _held_delivery(cast, fake_server)
    first = _dispatcher(AUXOT_CALLBACK_GRACE_SECONDS="1")
    try:
        assert fake_server.arrived.wait(30), "the dispatcher never called the receiver"
        first.signal(signal.SIGTERM, group=True)
        assert _exit(first, 1) == 1  # it had to give an attempt back
    finally:
        first.stop()
    delivery.refresh_from_db()
    assert delivery.state == "pending" and delivery.lease_token == ""  # released, not leased
    [attempt] = CallbackAttempt.objects.filter(delivery=delivery)
    assert attempt.error.startswith("interrupted")
    fake_server.release()
    second = _dispatcher()
    try:
        wait_for(lambda: CallbackDelivery.objects.filter(pk=delivery.pk,
                                                         state="delivered").exists(),
                 timeout=30, what="the second dispatcher's delivery")
    finally:
        second.stop()
    ids = {request["headers"]["webhook-id"] for request in fake_server.requests}
    assert ids == {delivery.webhook_id} and len(fake_server.requests) == 2


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_qcluster_lets_its_dispatchers_attempt_finish_on_sigterm(
        cast, fake_server, clusters, group):
    delivery = _held_delivery(cast, fake_server)
    cluster = clusters(**ENV, AUXOT_WORKER_GRACE_SECONDS="60")
    assert fake_server.arrived.wait(30), "the cluster's dispatcher never called the receiver"
    wait_for(lambda: WorkerHeartbeat.objects.filter(
        name__endswith=f":{cluster.proc.pid}").exists(), timeout=60, what="a running cluster")
    cluster.signal(signal.SIGTERM, group=group)
    fake_server.release()
    wait_for(lambda: not cluster.group_pids(), timeout=60 + MARGIN, interval=0.1,
             what="every process of the cluster to exit")
    assert cluster.proc.wait(5) == 0
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 1
    assert len(fake_server.requests) == 1



def test_with_json_logs_every_line_of_a_stop_is_json(db):
    """`manage.py callbacks` wrote its "stopping" line as bare text into a LOG_FORMAT=json
    stream (README: each line is one JSON object)."""
    dispatcher = _dispatcher(LOG_FORMAT="json", LOG_LEVEL="INFO")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(
        line.decode() for line in dispatcher.proc.stderr), daemon=True)
    reader.start()
    try:  # its first line comes after the signal handlers are in place
        wait_for(lambda: lines, timeout=30, what="the dispatcher's first log line")
        dispatcher.signal(signal.SIGTERM)
        assert _exit(dispatcher, 20) == 0
    finally:
        dispatcher.stop()
    reader.join(10)
    messages = [json.loads(line)["message"] for line in lines if line.strip()]
    assert any(m.startswith("callbacks: stopping") for m in messages), messages
