"""The connection budget: pooled web processes, and the auxot.W001 check."""

import pytest

from auxot import checks


@pytest.fixture
def postgres(monkeypatch):
    monkeypatch.setattr(checks, "connections", {"default": type("C", (), {"vendor": "postgresql"})})


def test_default_configuration_fits_the_default_budget(postgres, settings):
    settings.AUXOT_WEB_PROCESSES, settings.DB_POOL_MAX_SIZE = 4, 8
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2}
    settings.AUXOT_CALLBACK_THREADS = 64  # senders hold no connection
    assert checks.connection_estimate()["total"] == (4 * 8 + 2 + checks.QCLUSTER_OVERHEAD
                                                     + checks.DISPATCHER_CONNECTIONS)
    assert checks.connection_budget_check() == []


def test_the_callback_dispatcher_counts_only_when_it_runs(postgres, settings):
    settings.AUXOT_CALLBACK_THREADS = 0
    assert checks.dispatcher_connections() == 0
    settings.AUXOT_CALLBACK_THREADS, settings.AUXOT_CALLBACK_DELIVERY = 16, "tasks"
    assert checks.dispatcher_connections() == 0


def test_too_many_connections_warn_with_the_arithmetic(postgres, settings):
    settings.AUXOT_WEB_PROCESSES, settings.DB_POOL_MAX_SIZE = 12, 8
    [warning] = checks.connection_budget_check()
    assert warning.id == "auxot.W001"
    assert "12 web processes x 8" in warning.msg and "AUXOT_DB_MAX_CONNECTIONS=100" in warning.msg


def test_without_a_pool_every_thread_counts(postgres, settings):
    settings.AUXOT_WEB_PROCESSES, settings.DB_POOL_MAX_SIZE, settings.AUXOT_WEB_THREADS = 2, 0, 64
    assert checks.connection_estimate()["web"] == 2 * 65
    assert [w.id for w in checks.connection_budget_check()] == ["auxot.W001"]


def test_the_readmes_figures_are_the_checks(postgres, settings):
    """The README's deployment table said 45 for a default host while auxot.W001 counted 46."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    settings.AUXOT_WEB_PROCESSES, settings.DB_POOL_MAX_SIZE = 4, 8
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2}
    settings.AUXOT_CALLBACK_THREADS, settings.AUXOT_CALLBACK_DELIVERY = 64, "dispatcher"
    estimate = checks.connection_estimate()
    qcluster = f"2 + {checks.QCLUSTER_OVERHEAD} + {checks.DISPATCHER_CONNECTIONS}"
    assert f"| 1 | {qcluster} = {estimate['qcluster']} |" in readme
    assert f"| total | | **{estimate['total']}**" in readme
    assert f"worker {estimate['qcluster']} per host" in readme
    # The scaling table's per-host sentence, with and without the qcluster's dispatcher (it
    # said "+ 6 with AUXOT_CALLBACK_THREADS=0", which W001 counts as 6 fewer).
    own, dispatcher = checks.QCLUSTER_OVERHEAD, checks.DISPATCHER_CONNECTIONS
    # ... and its web row: GUNICORN_WORKERS = cores, each process a pool (it said "up to 4 x").
    settings.AUXOT_WEB_PROCESSES = 8
    assert checks.connection_estimate()["web"] == 64
    assert ("each host adds `GUNICORN_WORKERS` \N{MULTIPLICATION SIGN} `DB_POOL_MAX_SIZE` "
            "connections (8 cores: 64"
            in readme)
    settings.AUXOT_CALLBACK_THREADS = 0
    without = checks.connection_estimate()["qcluster"] - 2
    assert (f"`AUXOT_WORKERS` + {own + dispatcher} connections ({own} of qcluster's own, "
            f"{dispatcher} for its callback dispatcher; `AUXOT_WORKERS` + {without} with "
            "`AUXOT_CALLBACK_THREADS=0`)") in readme


def test_threads_below_the_long_polls_plus_the_working_slots_warn(settings):
    settings.AUXOT_WEB_THREADS, settings.AUXOT_LONG_POLL_MAX_WAITERS = 16, 12
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 4
    assert checks.web_threads_check(None) == []
    settings.AUXOT_WEB_THREADS = 4
    [warning] = checks.web_threads_check(None)
    assert warning.id == "auxot.W003" and "GUNICORN_THREADS=4" in warning.msg


def test_the_bench_endpoints_outside_debug_warn(settings):
    settings.AUXOT_BENCH_CEILINGS, settings.DEBUG = True, True
    assert checks.bench_endpoints_check(None) == []
    settings.DEBUG = False
    assert [w.id for w in checks.bench_endpoints_check(None)] == ["auxot.W004"]
    settings.AUXOT_BENCH_CEILINGS = False
    assert checks.bench_endpoints_check(None) == []


def test_sqlite_is_not_checked(settings, monkeypatch):
    monkeypatch.setattr(checks, "connections", {"default": type("C", (), {"vendor": "sqlite"})})
    settings.AUXOT_WEB_PROCESSES = 100
    assert checks.connection_budget_check() == []


def test_only_a_web_process_on_postgresql_pools():
    import subprocess
    import sys

    from tests.processes import ROOT

    probe = ("from django.conf import settings; import django; django.setup(); "
             "print(settings.DATABASES['default'].get('OPTIONS', {}).get('pool'), "
             "settings.DATABASES['default']['CONN_MAX_AGE'])")
    base = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "x", "DJANGO_SETTINGS_MODULE": "auxot.settings",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/auxot_unused"}

    def run(**env):
        return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**base, **env},
                              capture_output=True, text=True, timeout=60, check=True).stdout
    assert run(AUXOT_WEB_PROCESS="1") == "{'min_size': 2, 'max_size': 8, 'timeout': 10.0} 0\n"
    assert run() == "None 60\n"  # qcluster, manage.py: persistent, never a pool across a fork
    assert run(AUXOT_WEB_PROCESS="1", DB_POOL_MAX_SIZE="0") == "None 60\n"


def test_a_deployment_without_a_public_base_url_warns_under_check_deploy(settings):
    """Callbacks have no request to take a host from: without the setting their links (and
    a poll's approve_url) were bare paths, and nothing said so."""
    from django.core.checks import run_checks

    settings.AUXOT_PUBLIC_BASE_URL = ""
    assert "auxot.W005" in {w.id for w in run_checks(include_deployment_checks=True)}
    assert "auxot.W005" not in {w.id for w in run_checks()}  # `check` alone: not a deploy
    settings.AUXOT_PUBLIC_BASE_URL = "https://auxot.example.com"
    assert "auxot.W005" not in {w.id for w in run_checks(include_deployment_checks=True)}
