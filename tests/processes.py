"""Real processes for end-to-end tests: a qcluster subprocess on the test database."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{user}{password}@{host}/{db['NAME']}"


def process_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update({
        "DJANGO_SETTINGS_MODULE": "auxot.settings",
        "DATABASE_URL": test_database_url(),
        "SECRET_KEY": "test-only-secret-key",
        "AUXOT_TICK_SECONDS": "0.1",
        "AUXOT_HEARTBEAT_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
        "AUXOT_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",  # the tests' local receivers
        "AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32",
    })
    env.update(extra)
    return env


class QCluster:
    """`manage.py qcluster` in its own process group, so a SIGKILL takes all of it at once."""

    command = "qcluster"

    def __init__(self, **env: str):
        self.env = process_env(**env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "QCluster":
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", self.command], cwd=ROOT, env=self.env,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        return self

    def kill(self) -> None:
        """Like a machine dying: SIGKILL the whole group, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def signal(self, signum: int, *, group: bool = False) -> None:
        """Send signum to the main process, or with group=True to its whole process group."""
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def group_pids(self) -> list[int]:
        """Live (not zombie) processes of this cluster's process group, from /proc."""
        return group_pids(self.proc.pid)

    def stop(self) -> None:
        """Graceful stop, as a supervisor does it: SIGTERM to the main process only."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # any straggler


class CallbackDispatcher(QCluster):
    """`manage.py callbacks`: the callback dispatcher alone."""

    command = "callbacks"


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            state, _ppid, group = (entry / "stat").read_text().rpartition(")")[2].split()[:3]
            if int(group) == pgid and state != "Z":
                pids.append(int(entry.name))
    return pids


def settings_printed(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    """`print` of these settings as a fresh process reads them from `env` alone (no test
    settings, no inherited environment), for defaults and start-up validation."""
    code = f"from auxot import settings as s; print({', '.join(f's.{n}' for n in names)})"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "SECRET_KEY": "x", **env},
                          timeout=60, check=False)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """`gunicorn auxot.wsgi` with the repository's gunicorn.conf.py, on the test database.

    `workers=None` keeps gunicorn.conf.py's default process count. stderr (gunicorn's own
    log) goes to `self.log_path`. `start()` returns once a worker answers HTTP, not merely
    when the arbiter listens: a request sent before a worker has booted sits in the listen
    backlog, and a SIGTERM then resets it."""

    def __init__(self, workers: int | None = 1, **env: str):
        self.port = free_port()
        extra = {"WEB_CONCURRENCY": str(workers)} if workers else {}
        self.env = process_env(**extra, **env)
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log")  # noqa: SIM115
        self.log_path = self._log.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Gunicorn":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "auxot.wsgi", "-b", f"127.0.0.1:{self.port}"],
            cwd=ROOT, env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=self._log,
        )
        wait_for(self._answers, timeout=60, interval=0.1, what="a gunicorn worker to answer")
        return self

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"gunicorn exited: {self.log()[-2000:]}"
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"GET /v1/problems/not_found HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Connection: close\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.1 200")
        return False

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def refuses_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return True
        return False

    def terminate(self) -> None:
        """SIGTERM to the arbiter: graceful shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        self.terminate()
        if self.proc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
