"""Readiness checks: database (reachable, migrated), broker, worker heartbeat, backlog age.

Each probe runs the database-backed checks in one thread and the broker check in another,
and waits at most AUXOT_READY_CHECK_TIMEOUT_SECONDS for them: a dead dependency gives a
fast failure, not a hung probe. There is at most one thread per group (database-backed,
other) in a process: a probe waits, within its own time limit, for an earlier one still
running, and if that one is still running then, reports its checks as failing instead of
starting another thread, so a hung database cannot pile threads (or connections) up, however
the checks are named or repeated in `?checks=`.
Details name what failed, never a host, a URL or an exception's text.
"""

import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Max, Min
from django.utils import timezone

from auxot.broker import broker_get
from workflows.models import WorkerHeartbeat, WorkItem

CHECKS = ("database", "broker", "worker", "backlog")


class CheckFailed(Exception):
    """A check's answer: the message is safe to show (no hosts, no secrets)."""


_migrated = {"ok": False}


def check_database(*, now: datetime, host: str | None) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    if not _migrated["ok"]:  # once migrated, a running process stays so: check once
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if pending:
            raise CheckFailed(f"{len(pending)} migration(s) not applied")
        _migrated["ok"] = True
    return "reachable and migrated"


def check_broker(*, now: datetime, host: str | None) -> str:
    depth = broker_get().queue_size()
    return f"{'redis' if settings.REDIS_URL else 'orm'} broker, {depth} queued"


def check_worker(*, now: datetime, host: str | None) -> str:
    beats = WorkerHeartbeat.objects.all()
    if host:  # heartbeats are named host:pid
        beats = beats.filter(name__startswith=f"{host}:")
    seen = beats.aggregate(seen=Max("seen_at"))["seen"]
    limit = settings.AUXOT_READY_HEARTBEAT_MAX_AGE_SECONDS
    where = " on this host" if host else ""
    if seen is None:
        raise CheckFailed(f"no worker heartbeat{where} has ever been seen")
    age = (now - seen).total_seconds()
    if age > limit:
        raise CheckFailed(f"no worker heartbeat{where} for {age:.0f} s (limit {limit} s)")
    return f"last heartbeat {max(age, 0):.0f} s ago"


def oldest_due_age(now: datetime) -> float:
    """Seconds the longest-waiting due-but-unclaimed work item has waited (0: none).

    A claimed item's next_run_at is its lease's end (in the future), so every row due now
    is waiting for a worker: queued, woken from a delay or backoff, or left by a dead one.
    """
    oldest = WorkItem.objects.filter(next_run_at__lte=now).aggregate(
        oldest=Min("next_run_at"))["oldest"]
    return max((now - oldest).total_seconds(), 0.0) if oldest else 0.0


def check_backlog(*, now: datetime, host: str | None) -> str:
    age = oldest_due_age(now)
    limit = settings.AUXOT_READY_BACKLOG_MAX_AGE_SECONDS
    if age > limit:
        raise CheckFailed(f"the oldest due work item has waited {age:.0f} s (limit {limit} s)")
    return f"oldest due work item waited {age:.0f} s"


FUNCTIONS: dict[str, Callable[..., str]] = {
    "database": check_database, "broker": check_broker, "worker": check_worker,
    "backlog": check_backlog,
}
# Checks that need the database, run in order on one connection; the ORM broker is one.
_DB_BACKED = ("database", "worker", "backlog")


class _Probe:
    """One group of checks running in its own thread, at most one per group at a time."""

    running: dict[str, threading.Thread] = {}  # "db" / "other" -> the group's thread
    lock = threading.Lock()

    def __init__(self, names: tuple[str, ...], *, now: datetime, host: str | None):
        self.names, self.now, self.host = names, now, host
        self.group = "db" if "database" in names else "other"
        self.results: dict[str, dict] = {}
        self.thread: threading.Thread | None = None

    def try_start(self) -> threading.Thread | None:
        """Start this probe's thread if its group has none running: None when it started,
        else the group's running thread (to wait for)."""
        with self.lock:
            previous = self.running.get(self.group)
            if previous is not None and previous.is_alive():
                return previous
            self.thread = threading.Thread(target=self._run, daemon=True, name="auxot-readyz")
            self.thread.start()
            self.running[self.group] = self.thread
            return None

    def _run(self) -> None:
        try:
            failed_db = False
            for name in self.names:
                if failed_db and name in _DB_BACKED:
                    self.results[name] = {"status": "fail", "detail": "database unavailable"}
                    continue
                self.results[name] = _one(name, now=self.now, host=self.host)
                failed_db = failed_db or (name == "database"
                                          and self.results[name]["status"] == "fail")
        finally:
            connection.close()  # this thread's own connection (or pooled one) goes back


def _one(name: str, *, now: datetime, host: str | None) -> dict:
    started = time.monotonic()
    try:
        detail, status = FUNCTIONS[name](now=now, host=host), "ok"
    except CheckFailed as exc:
        detail, status = str(exc), "fail"
    except Exception as exc:  # the class name only: messages may carry hosts or DSNs
        detail, status = f"unavailable ({type(exc).__name__})", "fail"
    return {"status": status, "detail": detail,
            "ms": round((time.monotonic() - started) * 1000, 1)}


def _groups(names: list[str]) -> list[tuple[str, ...]]:
    db_backed = [n for n in names if n in _DB_BACKED or (n == "broker" and not settings.REDIS_URL)]
    if "database" not in db_backed and db_backed:
        db_backed.insert(0, "database")  # a check that needs the database needs it first
    other = [n for n in names if n not in db_backed]
    return [tuple(group) for group in (db_backed, other) if group]


def readiness(names: list[str] | None = None, *, host: str | None = None,
              now: datetime | None = None) -> tuple[bool, dict]:
    """(ready, body): every named check (default all) within the time limit."""
    wanted = set(names or CHECKS)
    names = [name for name in CHECKS if name in wanted]  # each once, in one order
    now = now or timezone.now()
    timeout = settings.AUXOT_READY_CHECK_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    probes = [_Probe(group, now=now, host=host) for group in _groups(names)]
    waiting, started = list(probes), []
    while waiting:  # every group that can start does, before any wait for a busy one
        busy = {}
        for probe in waiting:
            if (running := probe.try_start()) is None:
                started.append(probe)
            else:
                busy[probe] = running
        waiting = list(busy)
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        next(iter(busy.values())).join(left)
    for probe in started:
        probe.thread.join(max(deadline - time.monotonic(), 0))
    checks = {}
    for probe in probes:
        for name in probe.names:
            result = dict(probe.results.get(name) or {})
            if not result:
                why = (f"timed out after {timeout:g} s" if probe in started
                       else "an earlier check is still running")
                result = {"status": "fail", "detail": why}
            checks[name] = result
    checks = {name: checks[name] for name in names}
    ready = all(check["status"] == "ok" for check in checks.values())
    return ready, {"status": "ok" if ready else "fail", "checks": checks}


def this_host() -> str:
    return socket.gethostname()


def heartbeat_age(now: datetime) -> float | None:
    seen = WorkerHeartbeat.objects.aggregate(seen=Max("seen_at"))["seen"]
    return (now - seen).total_seconds() if seen else None

