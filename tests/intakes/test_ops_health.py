"""/healthz, /readyz and `manage.py health`: 200 when ready, a fast 503 naming each failure."""

import json
import socket
import time
from datetime import timedelta
from io import StringIO

import dj_database_url
import pytest
from django.core.management import call_command
from django.db import connections
from django.db.utils import load_backend
from django.test import override_settings
from django.utils import timezone

from intakes.ops import checks
from workflows.models import WorkerHeartbeat, WorkItem
from workflows.services import work_item_create

# The checks run in their own threads: the rows they read must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker_alive(db):
    now = timezone.now()
    return WorkerHeartbeat.objects.create(name=f"{socket.gethostname()}:1", started_at=now,
                                          seen_at=now)


def _ready(api, query=""):
    response = api.get(f"/readyz{query}")
    return response.status_code, response.json()


def test_healthz_answers_without_touching_the_database(api, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = api.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_200_with_every_check_ok(api, worker_alive):
    status, body = _ready(api)
    assert status == 200 and body["status"] == "ok"
    assert list(body["checks"]) == ["database", "broker", "worker", "backlog"]
    assert all(check["status"] == "ok" for check in body["checks"].values())


def test_readyz_without_a_worker_heartbeat_is_503_naming_worker(api):
    status, body = _ready(api)
    assert status == 503 and body["status"] == "fail"
    assert body["checks"]["worker"] == {**body["checks"]["worker"], "status": "fail",
                                        "detail": "no worker heartbeat has ever been seen"}
    assert body["checks"]["database"]["status"] == "ok"


def test_readyz_with_a_stale_heartbeat_is_503(api, worker_alive):
    WorkerHeartbeat.objects.update(seen_at=timezone.now() - timedelta(seconds=61))
    status, body = _ready(api)
    assert status == 503 and "for 61 s (limit 60 s)" in body["checks"]["worker"]["detail"]


def test_readyz_with_an_old_due_item_is_503_naming_backlog(api, worker_alive, intake_a):
    item = work_item_create(workflow=intake_a.workflow, intake=intake_a, input={})
    WorkItem.objects.filter(pk=item.pk).update(next_run_at=timezone.now() - timedelta(
        seconds=301))
    status, body = _ready(api)
    assert status == 503 and body["checks"]["backlog"]["status"] == "fail"
    assert "limit 300 s" in body["checks"]["backlog"]["detail"]
    assert body["checks"]["worker"]["status"] == "ok"


def test_readyz_subset_leaves_out_worker_and_backlog(api):
    status, body = _ready(api, "?checks=database,broker")
    assert status == 200 and list(body["checks"]) == ["database", "broker"]


def test_readyz_unknown_check_is_400(api):
    response = api.get("/readyz?checks=database,nope")
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"


def test_broker_failure_is_503_without_the_brokers_address(api, worker_alive, monkeypatch):
    class DeadBroker:
        def queue_size(self):
            raise ConnectionError("Error 111 connecting to redis://:hunter2@10.1.2.3:6379")

    monkeypatch.setattr(checks, "broker_get", DeadBroker)
    monkeypatch.setattr(checks.settings, "REDIS_URL", "redis://:hunter2@10.1.2.3:6379")
    status, body = _ready(api)
    assert status == 503
    assert body["checks"]["broker"] == {**body["checks"]["broker"], "status": "fail",
                                        "detail": "unavailable (ConnectionError)"}
    assert "10.1.2.3" not in json.dumps(body) and "hunter2" not in json.dumps(body)


def _postgres_wrapper(port: int):
    settings_dict = {**connections["default"].settings_dict, "OPTIONS": {},
                     **dj_database_url.parse(f"postgres://auxot:pw@127.0.0.1:{port}/auxot")}
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "dead")
    wrapper.inc_thread_sharing()  # the check uses it from its own thread
    return wrapper


@pytest.fixture
def refused_database(monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens: connecting is refused at once
    monkeypatch.setattr(checks, "connection", _postgres_wrapper(port))


@pytest.fixture
def hung_database(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts the connection; nobody ever answers it
    monkeypatch.setattr(checks, "connection", _postgres_wrapper(listener.getsockname()[1]))
    monkeypatch.setattr(checks._Probe, "running", {})
    yield
    listener.close()


def test_dead_database_is_503_and_every_database_check_fails(api, refused_database):
    status, body = _ready(api)
    assert status == 503
    assert body["checks"]["database"]["detail"] == "unavailable (OperationalError)"
    assert body["checks"]["worker"]["detail"] == "database unavailable"
    assert body["checks"]["backlog"]["detail"] == "database unavailable"
    assert "127.0.0.1" not in json.dumps(body)


@override_settings(AUXOT_READY_CHECK_TIMEOUT_SECONDS=0.3)
def test_hung_database_times_out_and_a_second_probe_starts_no_new_thread(api, hung_database):
    started = time.monotonic()
    status, body = _ready(api, "?checks=database")
    # Unbounded, this would wait forever for the silent server; bounded, it answers.
    assert time.monotonic() - started < 10
    assert status == 503 and body["checks"]["database"]["detail"] == "timed out after 0.3 s"
    status, body = _ready(api, "?checks=database")
    assert status == 503
    assert body["checks"]["database"]["detail"] == "an earlier check is still running"


@override_settings(AUXOT_READY_CHECK_TIMEOUT_SECONDS=0.2)
def test_however_checks_are_named_a_hung_database_holds_one_thread(api, hung_database):
    """Keyed by the names as given, `?checks=database,database` or `worker,database` each
    started a thread of their own, every one holding a connection on the hung database."""
    import threading

    for query in ("database", "database,database", "worker,database", "backlog,worker",
                  "database,backlog,database", "broker,database"):
        status, body = _ready(api, f"?checks={query}")
        assert status == 503
        assert set(body["checks"]) == set(query.split(","))
    readyz = [t for t in threading.enumerate() if t.name == "auxot-readyz" and t.is_alive()]
    assert len(readyz) == 1
    assert set(checks._Probe.running) <= {"db", "other"}


@override_settings(AUXOT_READY_CHECK_TIMEOUT_SECONDS=0.3, REDIS_URL="redis://127.0.0.1:9/0")
def test_a_hung_database_does_not_make_a_healthy_broker_time_out(api, hung_database,
                                                                 monkeypatch):
    """With Redis the broker check is a group of its own: it starts at once, before the
    probe waits for the database group's earlier thread."""
    monkeypatch.setitem(checks.FUNCTIONS, "broker", lambda **kw: (
        time.sleep(0.05), "redis broker, 0 queued")[1])  # quick, but not instant
    for _ in range(2):  # the second finds the first's database thread still hanging
        status, body = _ready(api, "?checks=database,broker")
        assert status == 503
        assert body["checks"]["broker"] == {**body["checks"]["broker"], "status": "ok"}
    assert body["checks"]["database"]["detail"] == "an earlier check is still running"


def test_a_check_named_many_times_runs_once(api, worker_alive, monkeypatch):
    calls = []
    real = checks.FUNCTIONS["backlog"]
    monkeypatch.setitem(checks.FUNCTIONS, "backlog",
                        lambda **kw: (calls.append(1), real(**kw))[1])
    status, body = _ready(api, "?checks=" + ",".join(["backlog"] * 500))
    assert (status, list(body["checks"])) == (200, ["backlog"])
    assert calls == [1]


def test_unapplied_migrations_fail_the_database_check(api, monkeypatch):
    class Executor:
        def __init__(self, connection):
            self.loader = type("L", (), {"graph": type("G", (), {"leaf_nodes": list})()})()

        def migration_plan(self, targets):
            return [("workflows", "0099_future"), ("intakes", "0099_future")]

    monkeypatch.setattr(checks, "MigrationExecutor", Executor)
    monkeypatch.setitem(checks._migrated, "ok", False)
    status, body = _ready(api, "?checks=database")
    assert status == 503
    assert body["checks"]["database"]["detail"] == "2 migration(s) not applied"


def _health(*args) -> tuple[int, dict]:
    out = StringIO()
    try:
        call_command("health", *args, stdout=out)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.getvalue())


def test_health_command_exits_0_when_ready_and_1_when_not(worker_alive):
    assert _health()[0] == 0
    WorkerHeartbeat.objects.all().delete()
    code, body = _health()
    assert code == 1 and body["checks"]["worker"]["status"] == "fail"


def test_health_command_this_host_ignores_other_hosts_heartbeats(worker_alive):
    WorkerHeartbeat.objects.update(name="some-other-host:42")
    assert _health("--checks=worker")[0] == 0
    code, body = _health("--checks=worker", "--this-host")
    assert code == 1
    assert body["checks"]["worker"]["detail"] == (
        "no worker heartbeat on this host has ever been seen")
