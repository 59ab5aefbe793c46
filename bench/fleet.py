"""Fleet drill: `python bench/fleet.py --size N` as root (see BENCHMARKS.md "Fleet drill").

Builds a fleet of real hosts on this machine with network namespaces: a bridge axf-br0
(10.77.0.1: this driver and a counting receiver), axf-db (a PostgreSQL instance of its own
on 10.77.0.10), axf-redis (10.77.0.11, no persistence), axf-web1/axf-web2 (the Procfile's
`web` command: gunicorn with gunicorn.conf.py, on .21/.22) and axf-wk1/axf-wk2 (the
Procfile's `worker` command: qcluster on the Redis broker, .31/.32). The Procfile's
`release` command migrates. Every process reaches the others only over the bridge.

The workflow is a transform step then an `http` step that POSTs to the receiver, which
counts deliveries by Idempotency-Key (one side effect per key, like any idempotent API).
Scenarios, one run:

  capacity  a clean run: CPU ms per trigger (web), per step (workers), per item
            (PostgreSQL, Redis), PostgreSQL statements and commits per item
  kill      N triggers over both web hosts; every process of wk1 is SIGKILLed mid-run,
            then wk1 starts again
  partition wk2's link is downed for longer than the lease while it is inside http calls
            (the receiver holds its requests), then healed: wk1 takes its items over and
            wk2's late results are refused by the lease guard
  redis     Redis is stopped mid-run while triggers keep coming: 202 or a clear 503, and
            every 202 completes once Redis is back
  readyz    both worker hosts stopped: /readyz 503 naming `worker`; the database link
            down: /readyz 503 naming `database`, answered within the probe's time limit

Each prints accepted, completed, lost, duplicated and time to recover. Exit status 1 on
any lost, duplicated or failed item, a missing or phantom side effect, an unclear answer,
or a failed expectation. Everything (names prefixed axf, processes, temporary directories)
is removed on exit, on failure and on Ctrl-C; a run refuses to start over leftovers it
cannot remove, or while another run holds the lock. The PostgreSQL ceiling of the same run
(bare INSERT + COMMIT/s) is printed with the capacity figures.
"""

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.drills import classify

PREFIX = "axf"
NET = "10.77.0"
BRIDGE = f"{PREFIX}-br0"
HOSTS = {"db": 10, "redis": 11, "web1": 21, "web2": 22, "wk1": 31, "wk2": 32}
RECEIVER_PORT = 8900
WEB_PORT = 8000
# The newest PostgreSQL server binaries installed (Debian's layout).
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"),
             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
             default=Path("/usr/lib/postgresql/15/bin"))
TMP_ROOT = Path(tempfile.gettempdir())
# Short leases so a lost worker's items move within seconds: lease = 5 + 1 s.
STEP_TIMEOUT, LEASE_GRACE = 5, 1
LEASE = STEP_TIMEOUT + LEASE_GRACE
HEARTBEAT_MAX_AGE = 5
SCENARIOS = ("capacity", "kill", "partition", "redis", "readyz")
ACCEPTED: set[str] = set()  # every work id answered 202 in this run
CLK_TCK = os.sysconf("SC_CLK_TCK")
# One drill at a time: a second one would tear the first one's fleet down as leftovers.
LOCK = Path("/run/lock/auxot-fleet-drill.lock")
IP = shutil.which("ip") or "/usr/sbin/ip"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def addr(host: str) -> str:
    return f"{NET}.{HOSTS[host]}"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def ns(host: str) -> str:
    return f"{PREFIX}-{host}"


def veth(host: str) -> str:
    """The bridge side of a host's cable: downing it cuts the host off."""
    return f"{PREFIX}-{host}-h"


# --- topology ---------------------------------------------------------------------------

def leftovers() -> list[str]:
    found = [f"netns {line.split()[0]}" for line in sh(IP, "netns", "list").stdout.splitlines()
             if line.startswith(f"{PREFIX}-")]
    found += [f"link {line.split(':')[1].strip().split('@')[0]}"
              for line in sh(IP, "-o", "link", "show").stdout.splitlines()
              if line.split(":")[1].strip().startswith(f"{PREFIX}-")]
    found += [f"dir {p}" for p in TMP_ROOT.glob(f"{PREFIX}-*")]
    return found


def netns_pids(name: str) -> list[int]:
    out = sh(IP, "netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split()]


def teardown() -> None:
    """Remove everything a drill may have left: processes, namespaces, links, directories."""
    for line in sh(IP, "netns", "list").stdout.splitlines():
        name = line.split()[0]
        if not name.startswith(f"{PREFIX}-"):
            continue
        for _ in range(3):
            pids = netns_pids(name)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        sh(IP, "netns", "del", name, check=False)
    for line in sh(IP, "-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{PREFIX}-"):
            sh(IP, "link", "del", name, check=False)
    for path in TMP_ROOT.glob(f"{PREFIX}-*"):
        shutil.rmtree(path, ignore_errors=True)


def topology_build() -> None:
    sh(IP, "link", "add", BRIDGE, "type", "bridge")
    sh(IP, "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
    sh(IP, "link", "set", BRIDGE, "up")
    for host in HOSTS:
        name, outside, inside = ns(host), veth(host), f"{PREFIX}-{host}-n"
        sh(IP, "netns", "add", name)
        sh(IP, "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh(IP, "link", "set", inside, "netns", name)
        sh(IP, "link", "set", outside, "master", BRIDGE, "up")
        sh(IP, "-n", name, "addr", "add", f"{addr(host)}/24", "dev", inside)
        sh(IP, "-n", name, "link", "set", inside, "up")
        sh(IP, "-n", name, "link", "set", "lo", "up")


def link(host: str, state: str) -> None:
    sh(IP, "link", "set", veth(host), state)


def as_user(name: str) -> list[str]:
    entry = pwd.getpwnam(name)
    return [SETPRIV, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]


def ns_cpu_ms(host: str) -> float:
    """CPU time of every process in the namespace, plus the children they have reaped."""
    total = 0
    for pid in netns_pids(ns(host)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total * 1000 / CLK_TCK


# --- processes --------------------------------------------------------------------------

def procfile() -> dict[str, list[str]]:
    commands = {}
    for line in (common.ROOT / "Procfile").read_text().splitlines():
        if ":" in line and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.split()
    return commands


class Service:
    """One process (group) in a host's namespace; restarted like systemd's Restart=on-failure
    while it is wanted."""

    def __init__(self, host: str, argv: list[str], env: dict, log: Path, user: str = ""):
        self.host, self.argv, self.env, self.log = host, argv, env, log
        self.user = user
        self.proc: subprocess.Popen | None = None
        self.wanted, self.restarts = False, 0
        self._lock = threading.Lock()

    def start(self) -> "Service":
        prefix = [IP, "netns", "exec", ns(self.host)]
        if self.user:
            prefix += as_user(self.user)
        with self._lock:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(prefix + self.argv, cwd=common.ROOT, env=self.env,
                                             start_new_session=True, stdout=out,
                                             stderr=subprocess.STDOUT)
            self.wanted = True
        return self

    def supervise(self) -> None:
        with self._lock:
            died = self.wanted and self.proc is not None and self.proc.poll() is not None
        if died:
            time.sleep(2)  # RestartSec=2
            if self.wanted:
                self.restarts += 1
                self.start()

    def kill_host(self) -> int:
        """SIGKILL every process of the host (not only this service's group)."""
        with self._lock:
            self.wanted = False
        pids = netns_pids(ns(self.host))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        return len(pids)

    def stop(self, timeout: float = 45) -> None:
        with self._lock:
            self.wanted = False
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


class Fleet:
    def __init__(self, tmp: Path, web_workers: int, q_workers: int):
        self.tmp = tmp
        self.db_url = f"postgres://postgres@{addr('db')}:5432/auxot"
        self.redis_url = f"redis://{addr('redis')}:6379/0"
        self.env = fleet_env(self.db_url, self.redis_url)
        self.services: dict[str, Service] = {}
        self.web_workers, self.q_workers = web_workers, q_workers
        self.stopping = threading.Event()
        self._watch = threading.Thread(target=self._supervise, daemon=True)

    def _supervise(self) -> None:
        while not self.stopping.wait(0.5):
            for service in list(self.services.values()):
                service.supervise()

    def service(self, name: str, host: str, argv: list[str], env: dict | None = None,
                user: str = "") -> Service:
        svc = Service(host, argv, env or self.env, self.tmp / f"{name}.log", user)
        self.services[name] = svc
        return svc.start()

    def postgres_start(self) -> None:
        data = self.tmp / "pgdata"
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        subprocess.run([*as_user("postgres"), str(PG_BIN / "initdb"), "-D", str(data),
                        "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {NET}.0/24 trust\n")
        self.service("postgres", "db", [
            str(PG_BIN / "postgres"), "-D", str(data), "-c", f"listen_addresses={addr('db')}",
            "-c", f"unix_socket_directories={data}", "-c", "max_connections=200",
            "-c", "shared_preload_libraries=pg_stat_statements",
            "-c", "pg_stat_statements.track=all"], user="postgres")
        wait_for(lambda: _pg_ping(f"postgres://postgres@{addr('db')}:5432/postgres"),
                 60, "PostgreSQL")
        import psycopg

        with psycopg.connect(f"postgres://postgres@{addr('db')}:5432/postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE auxot")
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")

    def redis_start(self) -> None:
        self.service("redis", "redis", [
            "/usr/bin/redis-server", "--bind", addr("redis"), "--port", "6379",
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--dir", str(self.tmp)], user="nobody")
        wait_for(lambda: _tcp_ping(addr("redis"), 6379), 30, "Redis")

    def release(self) -> None:
        argv = procfile()["release"]
        out = subprocess.run([IP, "netns", "exec", ns("web1"), *argv], cwd=common.ROOT,
                             env=self.env, capture_output=True, text=True, timeout=300)
        if out.returncode:
            raise RuntimeError(f"release step failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    def web_start(self, host: str) -> None:
        env = {**self.env, "GUNICORN_BIND": f"{addr(host)}:{WEB_PORT}",
               "GUNICORN_WORKERS": str(self.web_workers)}
        self.service(host, host, procfile()["web"], env)
        wait_for(lambda: _http_ok(f"http://{addr(host)}:{WEB_PORT}/healthz"), 60, host)

    def worker_start(self, host: str) -> None:
        self.service(host, host, procfile()["worker"])

    def start(self) -> None:
        self.postgres_start()
        self.redis_start()
        self.release()
        for host in ("web1", "web2"):
            self.web_start(host)
        for host in ("wk1", "wk2"):
            self.worker_start(host)
        self._watch.start()

    def stop(self) -> None:
        self.stopping.set()
        for name in ("wk1", "wk2", "web1", "web2", "redis", "postgres"):
            if name in self.services:
                self.services[name].stop(timeout=10)


def fleet_env(db_url: str, redis_url: str) -> dict[str, str]:
    """The one environment file every host reads (like /etc/auxot/auxot.env)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AUXOT_", "GUNICORN_", "DB_", "PROMETHEUS_"))
           and k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env["PATH"] = f"{common.ROOT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update({
        "DJANGO_SETTINGS_MODULE": "auxot.settings",
        "DATABASE_URL": db_url, "REDIS_URL": redis_url,
        "SECRET_KEY": "fleet-drill-only-secret-key-0123456789",
        "ALLOWED_HOSTS": f"{addr('web1')},{addr('web2')}",
        "AUXOT_OUTBOUND_ALLOWED_NETWORKS": f"{NET}.1/32",
        "LOG_LEVEL": "WARNING", "AUXOT_REQUEST_LOG": "0",
        "AUXOT_RATE_LIMIT_KEY": "1000000000", "AUXOT_RATE_LIMIT_INTAKE": "1000000000",
        "AUXOT_RATE_LIMIT_ORG": "1000000000",
        "AUXOT_POLL_RATE_PER_KEY": "1000000000", "AUXOT_POLL_RATE_PER_ORG": "1000000000",
        "AUXOT_STEP_TIMEOUT_SECONDS": str(STEP_TIMEOUT),
        "AUXOT_LEASE_GRACE_SECONDS": str(LEASE_GRACE),
        "AUXOT_TASK_TIMEOUT_SECONDS": "30", "AUXOT_REQUEUE_AFTER_SECONDS": "5",
        "AUXOT_TICK_SECONDS": "0.1", "AUXOT_HEARTBEAT_SECONDS": "1",
        "AUXOT_READY_HEARTBEAT_MAX_AGE_SECONDS": str(HEARTBEAT_MAX_AGE),
        "AUXOT_WORKER_GRACE_SECONDS": "5",
        "AUXOT_HTTP_TIMEOUT_SECONDS": str(STEP_TIMEOUT),
        "AUXOT_RETRY_BACKOFF_BASE_SECONDS": "1", "AUXOT_RETRY_BACKOFF_CAP_SECONDS": "2",
        "GUNICORN_GRACEFUL_TIMEOUT": "5",
    })
    return env


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {seconds:.0f} s")


def _pg_ping(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def _tcp_ping(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), 1).close()
    except OSError:
        return False
    return True


def _http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


# --- the counting receiver ---------------------------------------------------------------

class Receiver:
    """Counts deliveries by Idempotency-Key; holds requests from listed sources on demand."""

    def __init__(self, host: str = f"{NET}.1", port: int = RECEIVER_PORT):
        self.lock = threading.Lock()
        self.deliveries: Counter = Counter()
        self.held_now: Counter = Counter()
        self.hold_from: set[str] = set()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = self.headers.get("Idempotency-Key", "")
                source = self.client_address[0]
                with receiver.lock:
                    receiver.deliveries[key] += 1
                    hold = source in receiver.hold_from
                    if hold:
                        receiver.held_now[source] += 1
                if hold:
                    receiver.release.wait(120)
                    with receiver.lock:
                        receiver.held_now[source] -= 1
                body = b'{"ok": true}'
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def hold(self, source: str) -> None:
        with self.lock:
            self.release.clear()
            self.hold_from = {source}

    def unhold(self) -> None:
        with self.lock:
            self.hold_from = set()
        self.release.set()

    def held(self, source: str) -> int:
        with self.lock:
            return self.held_now[source]

    def snapshot(self) -> Counter:
        with self.lock:
            return Counter(self.deliveries)


# --- load and checks ---------------------------------------------------------------------

def fixture_create():
    """An intake on a workflow: a transform step, then an `http` step POSTing to the receiver."""
    from intakes.models import Intake
    from workflows.models import Step

    fixture = common.fixture_create("fleet", steps=1)
    workflow = Intake.objects.get(pk=fixture.intake_id).workflow
    Step.objects.create(workflow=workflow, position=2, name="effect", kind="http",
                        config={"method": "POST", "body": "input",
                                "url": f"http://{NET}.1:{RECEIVER_PORT}/effect"})
    return fixture


class Load:
    """Triggers spread over both web hosts, `threads` at a time, until `count` are sent or
    `stop` is set."""

    def __init__(self, fixture, count: int, threads: int = 16, offset: int = 0):
        self.fixture, self.count, self.threads, self.offset = fixture, count, threads, offset
        self.interval = 0.0  # pause after each request, per thread
        self.results: list[dict] = []
        self.sent = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import requests

        local = threading.local()
        urls = [f"http://{addr(h)}:{WEB_PORT}/v1/intake/{self.fixture.intake_id}"
                for h in ("web1", "web2")]

        def post(i: int) -> dict | None:
            if self.stop.is_set():
                return None
            if not hasattr(local, "session"):
                local.session = requests.Session()
                local.session.headers["Authorization"] = f"Bearer {self.fixture.token}"
            at = time.monotonic()
            try:
                response = local.session.post(urls[i % 2], json={"n": i, "customer": f"c{i}"},
                                              timeout=30)
            except requests.RequestException as exc:
                result = {"i": i, "status": None, "error": type(exc).__name__, "at": at}
            else:
                result = {"i": i, "status": response.status_code, "at": at}
                if response.status_code == 202:
                    result["work_id"] = response.json()["work_id"]
                elif response.headers.get("Content-Type") == "application/problem+json":
                    result["problem"] = response.json().get("code")
            with self._lock:
                self.sent += 1
            if self.interval:
                time.sleep(self.interval)
            return result

        with ThreadPoolExecutor(self.threads) as pool:
            done = pool.map(post, range(self.offset, self.offset + self.count))
            self.results = [r for r in done if r is not None]

    def start(self) -> "Load":
        self.thread.start()
        return self

    def join(self) -> list[dict]:
        self.thread.join()
        return self.results


def accepted_ids(results: list[dict]) -> list[str]:
    return [r["work_id"] for r in results if r["status"] == 202]


def active_count(ids: list[str]) -> int:
    from django.db import OperationalError, connection

    from workflows.models import WorkItem

    try:
        return WorkItem.objects.filter(pk__in=ids, status__in=WorkItem.ACTIVE).count()
    except OperationalError:
        connection.close()
        return len(ids)


def wait_settled(ids: list[str], timeout: float) -> float | None:
    """Seconds until none of `ids` is active, or None at the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not active_count(ids):
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def in_flight() -> dict[str, tuple]:
    """Items a worker holds a lease on right now: their step and lease token."""
    from workflows.models import WorkItem

    return {str(pk): (step, token) for pk, step, token in WorkItem.objects.filter(
        status="running").exclude(lease_token="").values_list(
        "pk", "current_step", "lease_token")}


def effects_check(ids: list[str], receiver: Receiver) -> dict:
    """The receiver's view: one side effect per completed item, every repeated delivery of a
    key explained by an attempt of its own (a crash, a retry or a refused late result)."""
    from workflows.models import StepRun, WorkItem

    deliveries = receiver.snapshot()
    keys = {f"{w}:2": w for w in ids}
    completed = set(str(pk) for pk in WorkItem.objects.filter(
        pk__in=ids, status="completed").values_list("pk", flat=True))
    attempts = defaultdict(Counter)
    for work_id, status in StepRun.objects.filter(
            work_item_id__in=ids, step__position=2).values_list("work_item_id", "status"):
        attempts[str(work_id)][status] += 1
    missing = [w for w in completed if not deliveries.get(f"{w}:2")]
    redelivered = {keys[k]: n for k, n in deliveries.items() if k in keys and n > 1}
    # Each attempt commits its row before it calls: n deliveries need n attempts.
    unexplained = [w for w, n in redelivered.items() if sum(attempts[w].values()) < n]
    return {"side_effects": sum(1 for k in keys if deliveries.get(k)),
            "deliveries": sum(deliveries.get(k, 0) for k in keys),
            "redelivered_keys": len(redelivered), "missing_side_effects": len(missing),
            "duplicated_side_effects": len(unexplained),
            "attempts_crashed": sum(a["crashed"] for a in attempts.values()),
            "late_results_refused": sum(a["discarded"] for a in attempts.values())}


def report(name: str, results: list[dict], receiver: Receiver, recover_s: float | None,
           extra: dict, expectations: dict) -> dict:
    summary = classify(results)
    classes = summary["classes"]
    effects = effects_check(accepted_ids(results), receiver)
    lost = classes.get("lost", 0)
    duplicated = classes.get("duplicated", 0) + effects["duplicated_side_effects"]
    ACCEPTED.update(accepted_ids(results))
    # Every accepted item must complete: a failed one (even with a reason) fails the drill.
    bad = (lost + duplicated + classes.get("completed_without_ledger", 0)
           + classes.get("failed_without_reason", 0) + classes.get("failed_with_reason", 0)
           + effects["missing_side_effects"]
           + sum(n for k, n in summary["rejections"].items() if k.startswith("unclear")))
    failed = [k for k, ok in expectations.items() if not ok]
    out = {"scenario": name, "accepted": summary["accepted"],
           "completed": classes.get("completed_once", 0), "lost": lost,
           "duplicated": duplicated, "time_to_recover_s": _round(recover_s),
           "failed_items": classes.get("failed_with_reason", 0), **effects,
           "rejections": summary["rejections"], **extra,
           "failed_expectations": failed, "passed": bad == 0 and not failed}
    print(json.dumps(out), flush=True)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def settle_timeout(n: int) -> float:
    return 120 + n / 5


# --- scenarios ---------------------------------------------------------------------------

def pg_counters(db_url: str, reset: bool = False) -> dict:
    """Commits of the drill's database and pg_stat_statements' totals (reset first if asked:
    the top statements are then this phase's)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        if reset:
            conn.execute("SELECT pg_stat_statements_reset()")
        commits = conn.execute("SELECT xact_commit FROM pg_stat_database "
                               "WHERE datname = 'auxot'").fetchone()[0]
        calls, exec_ms = conn.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0) "
            "FROM pg_stat_statements").fetchone()
        select = ("SELECT calls, total_exec_time, "
                  "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements ")
        top = {"calls": conn.execute(select + "ORDER BY calls DESC LIMIT 8").fetchall(),
               "time": conn.execute(select + "ORDER BY total_exec_time DESC LIMIT 8").fetchall()}
    return {"commits": int(commits), "statements": int(calls), "exec_ms": float(exec_ms),
            "top": top}


def pg_commit_ceiling(db_url: str, seconds: float = 3.0, threads: int = 8) -> float:
    """The ceiling of the same run: bare one-row INSERT + COMMIT transactions per second on
    the drill's PostgreSQL over the bridge, `threads` connections."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fleet_ceiling (id bigserial, v int)")
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def insert(i: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                conn.execute("INSERT INTO fleet_ceiling (v) VALUES (1)")
                counts[i] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(insert, range(threads)))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE fleet_ceiling")
    return sum(counts) / seconds


def scenario_capacity(fleet: Fleet, fixture, receiver: Receiver, size: int) -> dict:
    """A clean run, measured per tier (CPU from /proc of every process in each namespace)."""
    tiers = {"web": ("web1", "web2"), "worker": ("wk1", "wk2"), "postgres": ("db",),
             "redis": ("redis",)}

    def cpu() -> dict:
        return {tier: sum(ns_cpu_ms(h) for h in hosts) for tier, hosts in tiers.items()}

    ceiling = pg_commit_ceiling(fleet.db_url)
    before_cpu, before_pg = cpu(), pg_counters(fleet.db_url, reset=True)
    started = time.monotonic()
    results = Load(fixture, size, offset=1_000_000).start().join()
    posted_s = time.monotonic() - started
    ids = accepted_ids(results)
    settled = wait_settled(ids, settle_timeout(size))
    elapsed = time.monotonic() - started
    after_cpu, after_pg = cpu(), pg_counters(fleet.db_url)
    n = max(1, len(ids))
    used = {tier: after_cpu[tier] - before_cpu[tier] for tier in tiers}
    measured = {
        "ceiling_postgres_insert_commits_per_s": round(ceiling),
        "items": len(ids), "steps_per_item": 2, "post_seconds": round(posted_s, 1),
        "seconds_to_all_completed": round(elapsed, 1),
        "items_per_s_end_to_end": round(len(ids) / elapsed, 1),
        "web_cpu_ms_per_trigger": round(used["web"] / n, 2),
        "worker_cpu_ms_per_item": round(used["worker"] / n, 2),
        "worker_cpu_ms_per_step": round(used["worker"] / n / 2, 2),
        "postgres_cpu_ms_per_item": round(used["postgres"] / n, 2),
        "redis_cpu_ms_per_item": round(used["redis"] / n, 3),
        "postgres_statements_per_item": round(
            (after_pg["statements"] - before_pg["statements"]) / n, 1),
        "postgres_commits_per_item": round((after_pg["commits"] - before_pg["commits"]) / n, 1),
        "postgres_exec_ms_per_item": round(
            (after_pg["exec_ms"] - before_pg["exec_ms"]) / n, 2),
        # [calls per item, execution ms per item, statement], by calls and by time
        **{f"postgres_top_by_{order}": [
            [round(calls / n, 2), round(ms / n, 3), query] for calls, ms, query in rows]
           for order, rows in after_pg["top"].items()},
    }
    return report("capacity", results, receiver, None, {"measured": measured},
                  {"settled": settled is not None})


def wait_moved(ids: list[str], first: dict, since: float, timeout: float) -> float | None:
    """Seconds from `since` until every item in `ids` is finished or has moved on from the
    step and lease it had in `first` (another worker took it over); None at the deadline."""
    from workflows.models import WorkItem

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = WorkItem.objects.filter(pk__in=ids, status__in=WorkItem.ACTIVE).values_list(
            "pk", "current_step", "lease_token")
        if not [pk for pk, step, token in rows if (step, token) == first.get(str(pk))]:
            return time.monotonic() - since
        time.sleep(0.25)
    return None


def scenario_kill(fleet: Fleet, fixture, receiver: Receiver, size: int) -> dict:
    """SIGKILL every process of wk1 a third of the way in, start it again 2 s later."""
    load = Load(fixture, size).start()
    while load.sent < size // 3 and load.thread.is_alive():
        time.sleep(0.05)
    held = in_flight()
    killed = fleet.services["wk1"].kill_host()
    killed_at = time.monotonic()
    time.sleep(2)
    fleet.services["wk1"].start()
    recover = wait_moved(list(held), held, killed_at, settle_timeout(size))
    results = load.join()
    settled = wait_settled(accepted_ids(results), settle_timeout(size))
    return report("kill", results, receiver, recover, {
        "processes_killed": killed, "items_held_at_kill": len(held),
        "time_to_recover_means": "from the kill until every item held then had moved on",
        "all_settled_s_after_posting": _round(settled)},
        {"every accepted item settled": settled is not None,
         "processes were killed": killed > 0, "held items moved on": recover is not None})


def scenario_partition(fleet: Fleet, fixture, receiver: Receiver, size: int) -> dict:
    """Cut wk2 off while it is inside http calls (the receiver holds them), for twice the
    lease and more; then heal."""
    cut_seconds = 2 * LEASE + 4
    source = addr("wk2")
    receiver.hold(source)
    # A steady flow (about 30/s) that one worker host keeps up with: what is measured is the
    # take-over, not a backlog queued ahead of the items wk2 held.
    load = Load(fixture, size, threads=3, offset=2_000_000)
    load.interval = 0.1
    load.start()
    try:
        wait_for(lambda: receiver.held(source) >= 1, 60, "a call from wk2")
        time.sleep(0.5)
        held_calls = receiver.held(source)
        held = in_flight()
        link("wk2", "down")
        cut_at = time.monotonic()
        recover = wait_moved(list(held), held, cut_at, cut_seconds - 1)
        time.sleep(max(0.0, cut_at + cut_seconds - time.monotonic()))
    finally:
        link("wk2", "up")
        receiver.unhold()
    results = load.join()
    settled = wait_settled(accepted_ids(results), settle_timeout(size))
    # wk2's late results reach PostgreSQL once it is back; give them a moment to be refused.
    time.sleep(2 * LEASE)
    out = report("partition", results, receiver, recover, {
        "cut_seconds": cut_seconds, "lease_seconds": LEASE, "wk2_calls_held": held_calls,
        "items_held_at_cut": len(held),
        "time_to_recover_means": "from the cut until every item held then had moved on",
        "wk2_restarts": fleet.services["wk2"].restarts},
        {"every accepted item settled": settled is not None,
         "wk1 took over during the cut": recover is not None})
    # wk1 counted the attempts cut off by the partition crashed; wk2's late results, refused
    # by the lease guard, leave those rows as wk1 marked them (never `completed`, never
    # overwritten): a crashed row left after the heal is the refusal's trace.
    if not out["attempts_crashed"]:
        out["failed_expectations"].append("a late result was refused by the lease guard")
        out["passed"] = False
        print(json.dumps({"scenario": "partition", "failed": out["failed_expectations"]}))
    return out


def scenario_redis(fleet: Fleet, fixture, receiver: Receiver, outage: float) -> dict:
    """Stop Redis mid-run while triggers keep coming (about 40/s); start it again."""
    load = Load(fixture, int(40 * (outage + 8)), threads=4, offset=3_000_000)
    load.interval = 0.1
    load.start()
    time.sleep(3)
    fleet.services["redis"].stop(timeout=10)
    down_at = time.monotonic()
    time.sleep(outage)
    fleet.services["redis"].start()
    wait_for(lambda: _tcp_ping(addr("redis"), 6379), 30, "Redis")
    up_at, up_wall = time.monotonic(), time.time()
    time.sleep(3)
    load.stop.set()
    results = load.join()
    ids = accepted_ids(results)
    settled = wait_settled(ids, settle_timeout(len(ids)))
    recover = None if settled is None else time.monotonic() - up_at
    during = [r for r in results if down_at <= r["at"] <= up_at]
    early, resumed = finished_around(accepted_ids(during), up_wall)
    answers = Counter(str(r["status"]) for r in results)
    clear = all(r["status"] == 202 or (r["status"] == 503 and r.get("problem"))
                for r in results)
    return report("redis", results, receiver, recover, {
        "outage_seconds": outage, "answers": dict(answers),
        "answered_during_outage": Counter(str(r["status"]) for r in during),
        "time_to_recover_means": "from Redis back until every accepted item completed",
        "finished_during_outage": early,
        "first_completion_after_redis_back_s": _round(resumed),
        "worker_restarts": {h: fleet.services[h].restarts for h in ("wk1", "wk2")}},
        {"every answer 202 or a clear 503": clear, "triggers answered during the outage":
         bool(during), "every accepted item settled": settled is not None})


def finished_around(ids: list[str], since: float) -> tuple[int, float | None]:
    """How many of `ids` finished before `since` (wall clock), and the seconds from `since`
    to the first one that finished after it."""
    from datetime import UTC, datetime

    from workflows.models import WorkItem

    moment = datetime.fromtimestamp(since, tz=UTC)
    before = WorkItem.objects.filter(pk__in=ids, finished_at__lt=moment).count()
    first = WorkItem.objects.filter(pk__in=ids, finished_at__gte=moment).order_by(
        "finished_at").values_list("finished_at", flat=True).first()
    return before, None if first is None else first.timestamp() - since


def readyz(host: str) -> tuple[int | None, dict, float]:
    import requests

    started = time.monotonic()
    try:
        response = requests.get(f"http://{addr(host)}:{WEB_PORT}/readyz", timeout=30)
        body = response.json()
    except (requests.RequestException, ValueError):
        return None, {}, time.monotonic() - started
    return response.status_code, body, time.monotonic() - started


def scenario_readyz(fleet: Fleet) -> dict:
    from django.conf import settings

    for host in ("wk1", "wk2"):
        fleet.services[host].stop(timeout=15)
    time.sleep(HEARTBEAT_MAX_AGE + 2)
    no_workers = readyz("web1")
    link("db", "down")
    try:
        time.sleep(0.5)
        no_db = readyz("web1")
    finally:
        link("db", "up")

    def failing(answer) -> list[str]:
        return sorted(k for k, v in answer[1].get("checks", {}).items() if v["status"] != "ok")

    limit = settings.AUXOT_READY_CHECK_TIMEOUT_SECONDS + 1.5
    out = {"scenario": "readyz",
           "worker_less": {"status": no_workers[0], "failing": failing(no_workers),
                           "worker_detail": no_workers[1].get("checks", {}).get(
                               "worker", {}).get("detail"), "seconds": round(no_workers[2], 2)},
           "database_less": {"status": no_db[0], "failing": failing(no_db),
                             "seconds": round(no_db[2], 2)}}
    expectations = {
        "worker-less fleet: 503 naming worker": no_workers[0] == 503
        and "worker" in failing(no_workers),
        "database-less web host: 503 naming database": no_db[0] == 503
        and "database" in failing(no_db),
        f"database-less answer within {limit:.1f} s": no_db[2] < limit}
    out["failed_expectations"] = [k for k, ok in expectations.items() if not ok]
    out["passed"] = not out["failed_expectations"]
    print(json.dumps(out), flush=True)
    return out


# --- the run -----------------------------------------------------------------------------

def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000, help="triggers of the kill scenario")
    parser.add_argument("--capacity-size", type=int, default=0,
                        help="triggers of the measured clean run (default size / 5)")
    parser.add_argument("--partition-size", type=int, default=0, help="default size / 5")
    parser.add_argument("--redis-outage", type=float, default=20.0, help="seconds")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers per host")
    parser.add_argument("--q-workers", type=int, default=2, help="AUXOT_WORKERS per host")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, in this order: {','.join(SCENARIOS)}")
    parser.add_argument("--no-rate-limits", action="store_true",
                        help="switch the rate limits off (their counters are hot rows: compare "
                             "the capacity figures with and without)")
    args = parser.parse_args()
    chosen = set(args.scenarios.split(","))
    if chosen - set(SCENARIOS):
        parser.error(f"unknown scenarios: {sorted(chosen - set(SCENARIOS))}")
    if os.geteuid() != 0:
        sys.exit("the fleet drill builds network namespaces: run it as root")
    lock = LOCK.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another fleet drill is running (it holds {LOCK})")
    teardown()
    if left := leftovers():
        sys.exit(f"leftovers of an earlier drill could not be removed: {left}")
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    tmp.chmod(0o755)
    fleet, receiver, reports = None, None, []
    started = time.monotonic()
    try:
        topology_build()
        receiver = Receiver().start()
        fleet = Fleet(tmp, args.web_workers, args.q_workers)
        fleet.env["AUXOT_WORKERS"] = str(args.q_workers)
        if args.no_rate_limits:
            fleet.env.update({f"AUXOT_RATE_LIMIT_{scope}": "0"
                              for scope in ("KEY", "INTAKE", "ORG")})
        fleet.start()
        os.environ.update({k: v for k, v in fleet.env.items() if k != "PATH"})
        common.django_setup()
        fixture = fixture_create()
        wait_for(lambda: readyz("web1")[0] == 200, 60, "a ready fleet")
        runs = {
            "capacity": lambda: scenario_capacity(
                fleet, fixture, receiver, args.capacity_size or max(100, args.size // 5)),
            "kill": lambda: scenario_kill(fleet, fixture, receiver, args.size),
            "partition": lambda: scenario_partition(
                fleet, fixture, receiver, args.partition_size or max(100, args.size // 5)),
            "redis": lambda: scenario_redis(fleet, fixture, receiver, args.redis_outage),
            "readyz": lambda: scenario_readyz(fleet),
        }
        for name in SCENARIOS:
            if name in chosen:
                reports.append(runs[name]())
    except BaseException as exc:
        reports.append({"scenario": "drill", "passed": False, "error": repr(exc)})
        print(json.dumps(reports[-1]), flush=True)
    finally:
        if fleet is not None:
            fleet.stop()
        if receiver is not None:
            receiver.stop()
        logs = common.ROOT / "var" / "fleet-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        for log in tmp.glob("*.log"):
            shutil.copy(log, logs / log.name)
        teardown()
    # A side effect for an item nobody was told about (no 202) would be a phantom.
    delivered = {key.rsplit(":", 1)[0] for key in receiver.snapshot()} if receiver else set()
    phantoms = delivered - ACCEPTED
    passed = bool(reports) and all(r["passed"] for r in reports) and not phantoms
    summary = {"size": args.size, "scenarios": args.scenarios,
               "rate_limits": not args.no_rate_limits, "phantom_side_effects": len(phantoms),
               "seconds": round(time.monotonic() - started),
               "load_average": [round(x, 2) for x in os.getloadavg()], "passed": passed,
               "leftovers": leftovers()}
    print(json.dumps(summary), flush=True)
    (common.ROOT / "var" / "fleet.json").write_text(json.dumps([*reports, summary], indent=2))
    sys.exit(0 if passed and not summary["leftovers"] else 1)


if __name__ == "__main__":
    main()
