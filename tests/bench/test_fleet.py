"""The fleet drill's own parts that decide its verdict (the drill itself needs root and
network namespaces: `.ci/run` runs it)."""

import configparser
import threading

import pytest
import requests

from bench import fleet
from workflows.models import StepRun, WorkItem


def test_the_drill_runs_the_procfile_commands_and_systemd_runs_the_same():
    commands = fleet.procfile()
    assert commands["web"] == ["gunicorn", "auxot.wsgi"]
    assert commands["worker"] == ["python", "manage.py", "qcluster"]
    assert commands["release"] == ["python", "manage.py", "migrate", "--noinput"]
    for unit, name in (("auxot-web.service", "web"), ("auxot-worker.service", "worker")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(fleet.common.ROOT / "deploy" / "systemd" / unit)
        exec_start = parser["Service"]["ExecStart"].split()
        # The unit names the venv's executable; the arguments are the Procfile's.
        assert exec_start[0].endswith("/" + commands[name][0])
        assert exec_start[1:] == commands[name][1:]


def test_every_host_reaches_the_others_over_the_bridge_only():
    env = fleet.fleet_env("postgres://postgres@10.77.0.10:5432/auxot",
                          "redis://10.77.0.11:6379/0")
    assert env["AUXOT_OUTBOUND_ALLOWED_NETWORKS"] == "10.77.0.1/32"
    assert "127.0.0.1" not in env["DATABASE_URL"] + env["REDIS_URL"]
    assert set(env["ALLOWED_HOSTS"].split(",")) == {fleet.addr("web1"), fleet.addr("web2")}
    # The lease the scenarios count on: the partition outlasts it twice over.
    assert int(env["AUXOT_STEP_TIMEOUT_SECONDS"]) + int(
        env["AUXOT_LEASE_GRACE_SECONDS"]) == fleet.LEASE


@pytest.fixture
def counting_receiver():
    receiver = fleet.Receiver(host="127.0.0.1", port=0).start()
    yield receiver, f"http://127.0.0.1:{receiver.server.server_address[1]}/effect"
    receiver.stop()


def test_receiver_counts_deliveries_by_idempotency_key(counting_receiver):
    receiver, url = counting_receiver
    for key in ("a:2", "a:2", "b:2"):
        assert requests.post(url, json={}, headers={"Idempotency-Key": key},
                             timeout=5).status_code == 200
    assert receiver.snapshot() == {"a:2": 2, "b:2": 1}


def test_receiver_holds_a_source_until_released(counting_receiver):
    receiver, url = counting_receiver
    receiver.hold("127.0.0.1")
    answers = []
    call = threading.Thread(target=lambda: answers.append(requests.post(
        url, json={}, headers={"Idempotency-Key": "held:2"}, timeout=30).status_code))
    call.start()
    fleet.wait_for(lambda: receiver.held("127.0.0.1") == 1, 10, "a held call")
    assert not answers
    receiver.unhold()
    call.join(10)
    assert answers == [200]
    assert receiver.held("127.0.0.1") == 0


class _Deliveries:
    def __init__(self, counts: dict):
        self.counts = counts

    def snapshot(self):
        return dict(self.counts)


def _item(workflow, status: str, runs: list[str]) -> str:
    item = WorkItem.objects.create(workflow=workflow, input={}, status=status)
    step = workflow.steps.get(position=2)
    for attempt, run_status in enumerate(runs, start=1):
        StepRun.objects.create(work_item=item, step=step, attempt=attempt, status=run_status,
                               started_at=item.created_at)
    return str(item.pk)


@pytest.fixture
def two_step_workflow(cast):
    from tests.conftest import make_workflow

    return make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                      ("http", {"method": "POST",
                                                "url": "http://10.77.0.1:8900/effect"})])


def test_a_repeated_delivery_is_a_duplicate_unless_an_attempt_explains_it(two_step_workflow):
    once = _item(two_step_workflow, "completed", ["completed"])
    retried = _item(two_step_workflow, "completed", ["crashed", "completed"])
    refused = _item(two_step_workflow, "completed", ["discarded", "completed"])
    twice = _item(two_step_workflow, "completed", ["completed"])
    silent = _item(two_step_workflow, "completed", ["completed"])
    deliveries = _Deliveries({f"{once}:2": 1, f"{retried}:2": 2, f"{refused}:2": 2,
                              f"{twice}:2": 2})
    found = fleet.effects_check([once, retried, refused, twice, silent], deliveries)
    assert found["side_effects"] == 4
    assert found["redelivered_keys"] == 3
    assert found["duplicated_side_effects"] == 1  # `twice`: one attempt, two deliveries
    assert found["missing_side_effects"] == 1  # `silent`: completed, never delivered
    assert found["late_results_refused"] == 1
    assert found["attempts_crashed"] == 1
