"""The benchmark's hygiene: it only empties bench databases, and it starts from nothing."""

import os
import time

import pytest
from django.db import connection
from django_q.models import OrmQ

from bench import common
from bench.profile import profile_cleanup
from tests.conftest import make_workflow, trigger
from workflows.models import WorkItem


@pytest.mark.parametrize("name", ["auxot_bench", "bench", "auxot_bench_mine", "x_bench_2"])
def test_bench_database_names_are_accepted(name):
    assert common.bench_database_check(f"postgres://u@h:5432/{name}?sslmode=disable") == name


@pytest.mark.parametrize("name", ["auxot", "auxot_test", "benchmarks", "auxot_benchy",
                                  "bench_auxot", "auxot_bench_", "auxot;bench"])
def test_other_database_names_are_refused(name):
    with pytest.raises(SystemExit, match="refusing to empty"):
        common.bench_database_check(f"postgres://u@h:5432/{name}")


def test_bench_processes_never_recycle_web_workers_mid_case():
    assert common.base_env()["GUNICORN_MAX_REQUESTS"] == "0"


def test_the_broker_is_chosen_by_redis_url(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert common.broker_env("redis") == {"REDIS_URL": "redis://127.0.0.1:6379/12"}
    assert common.broker_env("orm") == {"REDIS_URL": ""}  # even when the caller set one
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/13")
    assert common.broker_env("redis") == {"REDIS_URL": "redis://127.0.0.1:6379/13"}
    with pytest.raises(ValueError):
        common.broker_env("sqs")


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_a_bench_run_starts_from_an_empty_database(cast, monkeypatch):
    item_workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    WorkItem.objects.create(workflow=item_workflow, input={})
    OrmQ.objects.create(key="auxot", payload="x", lock=item_workflow.created_at)
    monkeypatch.setattr(common, "database_url", lambda: "postgres://u@h/x_bench_test")
    emptied = common.bench_database_reset()
    assert "workflows_workitem" in emptied and "django_migrations" not in emptied
    assert not WorkItem.objects.exists() and not OrmQ.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations")
        assert cursor.fetchone()[0] > 0


def test_profile_cleanup_deletes_the_items_its_triggers_created(cast, api, intake_a,
                                                                member_token):
    other = WorkItem.objects.create(workflow=intake_a.workflow, input={})
    for n in range(3):
        assert trigger(api, intake_a.pk, member_token, {"n": n}).status_code == 202
    OrmQ.objects.create(key="bench-ceiling", payload="{}", lock=other.created_at)
    fixture = common.Fixture(intake_id=str(intake_a.pk), token=member_token)
    assert profile_cleanup(fixture) == 3
    assert list(WorkItem.objects.all()) == [other]  # not one of the intake's
    assert not OrmQ.objects.filter(key="bench-ceiling").exists()


_TWO_THREADS = """
import os, threading, time
from bench import common
before = common.run_queue_seconds(os.getpid())
assert before is not None, "Linux keeps /proc/<pid>/task/*/schedstat"
def spin():
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
thread = threading.Thread(target=spin)
thread.start()
spin()
thread.join()
after = common.run_queue_seconds(os.getpid())
print(after[0] - before[0], after[1] - before[1])
"""


def test_run_queue_seconds_counts_every_threads_cpu():
    # In a process of its own: the test process's other threads (a watcher, a sender of an
    # earlier test) may end between the two reads, taking their CPU out of the sum.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _TWO_THREADS], check=True, text=True,
                         capture_output=True, cwd=common.ROOT).stdout.split()
    ran, waited = float(out[0]), float(out[1])
    # the spinning thread has ended, so its 0.2 s may be gone from the sum; the main
    # thread's stays
    assert ran >= 0.19
    assert waited >= 0


def test_run_queue_seconds_of_no_process_is_none():
    assert common.run_queue_seconds(2**22 + 1) is None  # above pid_max's default ceiling


SPIN = ("import sys, time\n"
        "def spin(s):\n"
        "    end = time.process_time() + s\n"
        "    while time.process_time() < end:\n"
        "        pass\n")


def test_cpu_by_role_counts_each_roles_processes_started_and_reaped_ones_too():
    import subprocess
    import sys

    # Started before the window, and spins 0.3 s inside it once told to.
    spinner = subprocess.Popen([sys.executable, "-c", SPIN + "sys.stdin.readline(); spin(0.3); "
                                "print('done', flush=True); sys.stdin.readline()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # its start-up is before the window
        where = common.CpuByRole({"spinner": [spinner.pid], "tests": [os.getpid()]}).start()
        spinner.stdin.write("go\n")
        spinner.stdin.flush()
        # Started and ended (reaped by this process) inside the window: 0.2 s.
        subprocess.run([sys.executable, "-c", SPIN + "spin(0.2)"], check=True)
        # Started inside the window and still alive at its end: 0.2 s.
        alive = subprocess.Popen([sys.executable, "-c", SPIN + "spin(0.2); print('done', "
                                  "flush=True); sys.stdin.readline()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert alive.stdout.readline().strip() == "done"
        assert spinner.stdout.readline().strip() == "done"
        spent = where.stop()
        alive.stdin.write("\n")
        alive.stdin.flush()
        alive.wait(10)
    finally:
        spinner.kill()
        spinner.wait(10)
    assert 0.28 <= spent["spinner"] < 0.6, spent  # its own spin, nothing of the others
    assert spent["tests"] >= 0.38, spent  # both children: the reaped one and the live one
    assert where.summary().startswith(f"{where.busy * where.wall * os.cpu_count():.1f} s of CPU")
    assert "spinner 0." in where.summary()


@pytest.mark.parametrize("name, allowed", [
    ("auxot_scale_bench", True), ("scale", True), ("auxot_scale", True), ("scale_2", True),
    ("auxot_bench", True), ("auxot_escalations", False), ("auxot", False),
    ("auxot_test", False), ("scaled_prod", False), ("auxot_scale_", False)])
def test_the_admin_scale_bench_empties_only_its_own_databases(name, allowed):
    from bench.admin_scale import scale_database_check

    url = f"postgres://postgres@127.0.0.1:5432/{name}"
    if allowed:
        assert scale_database_check(url) == name
    else:
        with pytest.raises(SystemExit, match="refusing to use database"):
            scale_database_check(url)
    with pytest.raises(SystemExit, match="needs PostgreSQL"):
        scale_database_check(f"sqlite:///{name}.db")
