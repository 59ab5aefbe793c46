"""Shared parts of bench/run.py and bench/drills.py: a database, a cast, real processes.

Everything runs against PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1/
auxot_bench) with gunicorn and `manage.py qcluster` as separate process groups.
"""

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/auxot_bench"
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


def _create_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[1].split("?")[0]
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
