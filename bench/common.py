"""Shared parts of bench/run.py and bench/drills.py: a database, a cast, real processes.

Everything runs against PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1/
auxot_bench) with gunicorn and `manage.py qcluster` as separate process groups, with
gunicorn's worker recycling off (GUNICORN_MAX_REQUESTS=0: a recycled worker mid-case is a
cold start inside the figures). The broker is the ORM broker, or with `broker_env("redis")`
django-q2's Redis broker at REDIS_URL (default redis://127.0.0.1:6379/12).
"""

import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/auxot_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
BROKERS = ("orm", "redis")
# Databases bench/run.py may empty: a name ending in "bench", or "<anything>_bench_<suffix>".
BENCH_DB_NAME = re.compile(r"^[A-Za-z0-9_]*(bench|_bench_[A-Za-z0-9_]+)$")
# Tables an empty bench database keeps: the schema's bookkeeping, written by migrate.
KEPT_TABLES = {"django_migrations", "django_content_type", "auth_permission"}
GREETING = "{greeting: join(' ', ['Hello,', input.customer || 'world']), n: input.n}"


def database_url() -> str:
    return os.environ.get("DATABASE_URL", DEFAULT_DB)


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "auxot.settings",
        "DATABASE_URL": database_url(),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-secret-key"),
        "LOG_LEVEL": "WARNING",
        # Limits on (the counter's upsert is part of the measured path) but out of reach.
        "AUXOT_RATE_LIMIT_KEY": os.environ.get("AUXOT_RATE_LIMIT_KEY", "1000000000"),
        "AUXOT_RATE_LIMIT_INTAKE": os.environ.get("AUXOT_RATE_LIMIT_INTAKE", "1000000000"),
        # The per-process poll buckets likewise: wrk polls with one key far past 50 a second.
        "AUXOT_POLL_RATE_PER_KEY": os.environ.get("AUXOT_POLL_RATE_PER_KEY", "1000000000"),
        "AUXOT_POLL_RATE_PER_ORG": os.environ.get("AUXOT_POLL_RATE_PER_ORG", "1000000000"),
        # No worker recycling in the middle of a case.
        "GUNICORN_MAX_REQUESTS": "0",
    })
    env.update(extra)
    return env


def django_setup() -> None:
    """Configure Django in this process on the bench database (created and migrated)."""
    os.environ.update({k: v for k, v in base_env().items() if k not in os.environ
                       or k in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")})
    sys.path.insert(0, str(ROOT))
    _create_database(database_url())
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def bench_database_check(url: str) -> str:
    """The database's name, if it is a bench database; exits otherwise (nothing is touched)."""
    name = database_name(url)
    if not BENCH_DB_NAME.match(name):
        sys.exit(f"refusing to empty database {name!r}: a bench database's name ends in "
                 f"'bench' or has a '_bench_' part (e.g. auxot_bench, auxot_bench_mine)")
    return name


def bench_database_reset() -> list[str]:
    """Empty the bench database (after django_setup): every table but the schema's
    bookkeeping, so no item, queue row or audit row of an earlier run is in the figures."""
    from django.db import connection

    bench_database_check(database_url())
    tables = sorted(set(connection.introspection.table_names()) - KEPT_TABLES)
    if tables:
        qn = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {', '.join(qn(t) for t in tables)} RESTART IDENTITY CASCADE")
    return tables


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS


def broker_env(broker: str) -> dict[str, str]:
    """The environment that makes a web or qcluster process use this broker (the app picks
    django-q2's Redis broker when REDIS_URL is set, its ORM broker otherwise)."""
    if broker not in BROKERS:
        raise ValueError(f"unknown broker {broker!r}")
    return {"REDIS_URL": redis_url() if broker == "redis" else ""}


def broker_purge(broker: str) -> None:
    """Drop the messages left on this broker's queue by an earlier (interrupted) run: the
    queue's own rows or list key only, never the rest of the database or Redis db."""
    from django.conf import settings
    from django_q.models import OrmQ

    name = settings.Q_CLUSTER["name"]
    if broker == "redis":
        import redis

        client = redis.from_url(redis_url())
        client.delete(f"django_q:{name}:q")
        client.close()
    else:
        OrmQ.objects.filter(key=name).delete()


class BrokerDepth(threading.Thread):
    """Samples the broker's message count every `interval` seconds while it runs.

    ORM broker: its OrmQ rows (waiting, plus taken by a pusher until acknowledged). Redis
    broker: the list's length (waiting only: a taken message has left Redis).
    """

    def __init__(self, broker: str, interval: float = 0.1) -> None:
        super().__init__(name="broker-depth", daemon=True)
        self.broker, self.interval = broker, interval
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        from django.conf import settings
        from django.db import connection
        from django_q.models import OrmQ

        name = settings.Q_CLUSTER["name"]
        client = None
        if self.broker == "redis":
            import redis

            client = redis.from_url(redis_url())
        try:
            while not self._stop_event.wait(self.interval):
                if client is not None:
                    self.samples.append(int(client.llen(f"django_q:{name}:q")))
                else:
                    self.samples.append(OrmQ.objects.filter(key=name).count())
        finally:
            if client is not None:
                client.close()
            connection.close()

    def stop(self) -> dict:
        self._stop_event.set()
        self.join(10)
        return {"max": max(self.samples, default=0), "median": median(self.samples),
                "samples": len(self.samples)}


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _process_cpu() -> dict[int, tuple[int, str, float]]:
    """Every live process: pid -> (parent pid, command name, CPU seconds so far: its own and
    its reaped children's)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            head, tail = stat.read_text().rsplit(")", 1)
            fields = tail.split()
            out[int(stat.parent.name)] = (int(fields[1]), head.split("(", 1)[1],
                                          sum(int(f) for f in fields[11:15])
                                          / os.sysconf("SC_CLK_TCK"))
    return out


class CpuByRole:
    """Where the machine's CPU went between start() and stop(): each role's processes (the
    pids given and all their descendants), PostgreSQL's (every process named `postgres`),
    and the rest. A process counts if it is alive at the end (all its CPU, if it started
    meanwhile), or was reaped meanwhile by one that is (its whole CPU then counts in its
    parent's role: a PostgreSQL connection that lasted one request is in the postmaster's).
    One that ended unreaped by a live process is missed."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles

    def _snapshot(self) -> dict[tuple[str, int], float]:
        """(role, pid) -> CPU seconds so far, for every live process."""
        procs = _process_cpu()
        role_of: dict[int, str] = {}
        for role, pids in self.roles.items():
            for pid in pids:
                role_of[pid] = role
        totals: dict[tuple[str, int], float] = {}
        for pid, (_parent, name, cpu) in procs.items():  # a pid, or its nearest ancestor, named
            role, at = None, pid
            for _ in range(64):  # walk up to a role's pid (or the top)
                if at in role_of:
                    role = role_of[at]
                    break
                if at not in procs:
                    break
                at = procs[at][0]
            if role is None:
                role = "postgresql" if name.startswith("postgres") else "other"
            totals[(role, pid)] = cpu
        return totals

    def start(self) -> "CpuByRole":
        self._start, self._busy = self._snapshot(), CpuBusy().start()
        self._wall = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        spent: dict[str, float] = {}
        for key, cpu in end.items():
            # A process started meanwhile spent all its CPU in the window.
            spent[key[0]] = spent.get(key[0], 0.0) + cpu - self._start.get(key, 0.0)
        self.busy = self._busy.stop()
        self.wall = time.monotonic() - self._wall
        self.spent = spent
        return spent

    def summary(self) -> str:
        """The machine's CPU seconds (from /proc/stat) and each role's, largest first."""
        machine = self.busy * self.wall * (os.cpu_count() or 1)
        parts = sorted(self.spent.items(), key=lambda kv: -kv[1])
        return (f"{machine:.1f} s of CPU in {self.wall:.1f} s: " + ", ".join(
            f"{role} {cpu:.1f} s" for role, cpu in parts if cpu >= 0.05))


def run_queue_seconds(pid: int) -> tuple[float, float] | None:
    """(CPU, waiting for a CPU) seconds summed over a process's live threads, from
    /proc/<pid>/task/*/schedstat (on-CPU ns, run-queue ns, timeslices): how long its
    threads were runnable but not running. None where the kernel keeps no schedstat."""
    on_cpu = waiting = 0
    found = False
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError):
            running, queued, _slices = path.read_text().split()
            on_cpu, waiting, found = on_cpu + int(running), waiting + int(queued), True
    return (on_cpu / 1e9, waiting / 1e9) if found else None


def idle_cost(cluster_pid: int, seconds: float) -> dict:
    """What an idle qcluster costs: its database transactions/s (PostgreSQL's counter for
    this database; the bench's own two reads subtracted) and its processes' CPU ms/s."""
    from django.db import connection

    def transactions() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()")
            return cursor.fetchone()[0]

    pids = [cluster_pid, *children(cluster_pid)]
    before_x, before_cpu = transactions(), _cpu_seconds(pids)
    time.sleep(seconds)
    after_x, after_cpu = transactions(), _cpu_seconds(pids)
    return {"seconds": seconds, "transactions_per_s": max(0, after_x - before_x - 1) / seconds,
            "cpu_ms_per_s": (after_cpu - before_cpu) * 1000 / seconds}


def load() -> list[float]:
    """The load average (1, 5, 15 min), printed and stored beside every figure."""
    return [round(value, 2) for value in os.getloadavg()]


class CpuBusy:
    """The machine's CPU use between start() and stop(), from /proc/stat: the fraction of
    all cores' time that was not idle (1.0: every core busy the whole time)."""

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    def start(self) -> "CpuBusy":
        self._start = self._read()
        return self

    def stop(self) -> float:
        total, idle = self._read()
        spent = total - self._start[0]
        return 1.0 - (idle - self._start[1]) / spent if spent else 0.0


def _create_database(url: str) -> None:
    if url.startswith("sqlite"):
        return  # the file is created on the first connection
    import psycopg
    from psycopg import sql

    name = database_name(url)
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@dataclass
class Fixture:
    intake_id: str
    token: str


def org_create(label: str):
    """A fresh business-plan organization named `<label>-<ms timestamp>`."""
    from auxot.models import Organization

    stamp = f"{label}-{int(time.time() * 1000)}"
    return Organization.objects.create(name=stamp, slug=stamp, plan="business")


def fixture_create(label: str, steps: int = 2) -> Fixture:
    """A fresh org, member, key and an intake on a `steps`-step transform workflow."""
    from django.contrib.auth import get_user_model

    from apikeys.services import apikey_issue
    from auxot.models import Membership
    from intakes.services import intake_create
    from workflows.models import Step, Workflow

    org = org_create(label)
    stamp = org.slug
    user = get_user_model().objects.create_user(stamp, f"{stamp}@example.com", None)
    Membership.objects.create(user=user, org=org, role="admin")
    workflow = Workflow.objects.create(org=org, name=stamp, slug=stamp)
    for position in range(1, steps + 1):
        Step.objects.create(workflow=workflow, position=position, name=f"t{position}",
                            kind="transform", config={"expression": GREETING})
    intake = intake_create(org=org, workflow=workflow, name=stamp)
    token = apikey_issue(org=org, label=stamp, user=user).token
    return Fixture(intake_id=str(intake.pk), token=token)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A child in its own process group, so SIGKILL takes all of it at once."""

    def __init__(self, argv: list[str], **env: str):
        self.argv, self.env = argv, base_env(**env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def gunicorn(port: int, workers: int = 2, **env: str) -> Proc:
    proc = Proc([sys.executable, "-m", "gunicorn", "auxot.wsgi", "-b", f"127.0.0.1:{port}",
                 "-w", str(workers)], **env).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return proc
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError("gunicorn did not start")


def qcluster(**env: str) -> Proc:
    return Proc([sys.executable, "manage.py", "qcluster"], **env).start()


def children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        path = Path(f"/proc/{parent}/task/{parent}/children")
        with contextlib.suppress(OSError):
            kids = [int(k) for k in path.read_text().split()]
            found += kids
            todo += kids
    return found


def peak_rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
