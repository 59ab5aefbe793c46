"""`manage.py qcluster` stops cleanly: SIGTERM or SIGINT, to the main process or to its whole
process group, ends every process of the cluster within AUXOT_WORKER_GRACE_SECONDS, and a
step caught in flight completes exactly once."""

import signal

import pytest

from tests.conftest import make_workflow
from tests.processes import wait_for
from workflows.models import Step, StepRun, WorkerHeartbeat, WorkItem
from workflows.services import work_item_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
GRACE = 3
MARGIN = 30  # generous: the machine may be busy; only the grace bound itself matters
FAST_LEASE = {"AUXOT_LEASE_GRACE_SECONDS": "1"}


def _running(cluster):
    """Main, sentinel, two workers, monitor and pusher are up, and the ticker heartbeats."""
    wait_for(lambda: len(cluster.group_pids()) >= 6 and WorkerHeartbeat.objects.filter(
        name__endswith=f":{cluster.proc.pid}").exists(), timeout=60, what="a running cluster")
    return cluster


def _gone(cluster) -> int:
    wait_for(lambda: not cluster.group_pids(), timeout=GRACE + MARGIN,
             interval=0.1, what="every process of the cluster to exit")
    return cluster.proc.wait(5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_stop_signal_ends_every_process_with_status_0(clusters, signum, group):
    cluster = _running(clusters(AUXOT_WORKER_GRACE_SECONDS=str(GRACE)))
    cluster.signal(signum, group=group)
    assert _gone(cluster) == 0
    assert b"Traceback" not in cluster.proc.stderr.read()


def _held_http_item(cast, fake_server, step_timeout: int = 60):
    workflow = make_workflow(cast.org_a, [("http", {"method": "POST",
                                                    "url": f"{fake_server.url}/charge",
                                                    "body": "input"})], name="Charge")
    Step.objects.filter(workflow=workflow).update(timeout_seconds=step_timeout)
    fake_server.hold_first = True
    return work_item_create(workflow=workflow, input={"amount": 5})


def _ledger(item) -> list[tuple[int, str]]:
    return list(StepRun.objects.filter(work_item=item).order_by("attempt")
                .values_list("attempt", "status"))


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_in_flight_step_finishes_within_the_grace_period(cast, fake_server, clusters, group):
    item = _held_http_item(cast, fake_server)
    cluster = _running(clusters(AUXOT_WORKER_GRACE_SECONDS="60"))
    assert fake_server.arrived.wait(30), "the step never called the server"
    cluster.signal(signal.SIGTERM, group=group)
    fake_server.release()  # the call answers after the signal: the worker still finishes it
    assert _gone(cluster) == 0
    item.refresh_from_db()
    assert item.status == "completed", item.error
    assert _ledger(item) == [(1, "completed")]
    assert len(fake_server.requests) == 1


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_step_past_the_grace_period_is_killed_then_completes_once(
        cast, fake_server, clusters, group):
    # The call outlives the grace period; its lease (step timeout + 1 s) expires soon after.
    item = _held_http_item(cast, fake_server, step_timeout=GRACE + 9)
    cluster = _running(clusters(AUXOT_WORKER_GRACE_SECONDS=str(GRACE), **FAST_LEASE))
    assert fake_server.arrived.wait(30), "the step never called the server"
    cluster.signal(signal.SIGTERM, group=group)
    assert _gone(cluster) == 1  # it had to kill the worker that outlived the grace period
    assert WorkItem.objects.get(pk=item.pk).status == "running"
    fake_server.release()
    clusters(**FAST_LEASE)
    item = wait_for(lambda: WorkItem.objects.filter(pk=item.pk, status__in=[
        "completed", "failed"]).first(), timeout=60, interval=0.2, what="completion")
    assert item.status == "completed", item.error
    assert _ledger(item) == [(1, "crashed"), (2, "completed")]
    keys = {r["headers"].get("Idempotency-Key") for r in fake_server.requests}
    assert keys == {f"{item.pk}:1"}


def test_with_json_logs_the_start_checks_are_a_json_line_too(clusters):
    """qcluster runs the system checks at start (README: it prints auxot.W001 there); with
    LOG_FORMAT=json their report was a block of plain text in the JSON stream."""
    import json

    cluster = _running(clusters(AUXOT_WORKER_GRACE_SECONDS=str(GRACE), LOG_FORMAT="json",
                                GUNICORN_THREADS="8"))  # auxot.W003, on any database
    cluster.signal(signal.SIGTERM)
    assert _gone(cluster) == 0
    lines = [json.loads(line) for line in cluster.proc.stderr.read().decode().splitlines()
             if line.strip()]
    [checks] = [line for line in lines if line["event"] == "system_checks"]
    assert "auxot.W003" in checks["message"] and checks["level"] == "WARNING"
