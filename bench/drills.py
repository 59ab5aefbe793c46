"""Crash drills: `python bench/drills.py [crash|sigterm|all] --size N` (see BENCHMARKS.md).

crash (Jepsen-style): N triggers over HTTP (16 threads) at a 2-step transform workflow
while a chaos loop SIGKILLs random qcluster process groups and starts fresh ones, and,
with --restart-postgres, restarts PostgreSQL once. The side-effect ledger is the StepRun
table: a step whose effect happened has exactly one `completed` run per item. Afterwards
every work id that got a 202 is classified: completed once / failed with a reason /
lost (no row, or not finished by the deadline) / duplicated (a step completed twice).
Every caller without a 202 must have got a problem+json error. Pass: lost 0, duplicated
0, unclear 0.

sigterm: gunicorn under load gets SIGTERM while two requests are mid-body; they must
finish with 202 (graceful shutdown), and no 202 may lack a stored item.

--restart-postgres restarts the machine's PostgreSQL cluster: only where nobody else
uses it (CI, a dedicated box). The lead runs the full-size drill.
"""

import argparse
import contextlib
import json
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

# Short leases so a killed worker's item is retried within seconds, not minutes.
DRILL_ENV = {"AUXOT_STEP_TIMEOUT_SECONDS": "5", "AUXOT_LEASE_GRACE_SECONDS": "1",
             "AUXOT_REQUEUE_AFTER_SECONDS": "5", "AUXOT_TASK_TIMEOUT_SECONDS": "10",
             "AUXOT_TICK_SECONDS": "0.1", "AUXOT_HEARTBEAT_SECONDS": "1"}


def _fire(url: str, token: str, size: int, threads: int = 16) -> list[dict]:
    import requests

    local = threading.local()

    def post(i: int) -> dict:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Bearer {token}"
        try:
            response = local.session.post(url, json={"n": i, "customer": f"c{i}"}, timeout=60)
        except requests.RequestException as exc:
            return {"i": i, "status": None, "error": type(exc).__name__}
        result = {"i": i, "status": response.status_code}
        if response.status_code == 202:
            result["work_id"] = response.json()["work_id"]
        elif response.headers.get("Content-Type") == "application/problem+json":
            result["problem"] = response.json().get("code")
        return result

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, range(size)))


class Chaos(threading.Thread):
    """SIGKILL a random qcluster group every 0.5-2 s and start a fresh one."""

    def __init__(self, clusters: list, restart_postgres: str, size_hint_s: float):
        super().__init__(daemon=True)
        self.clusters, self.restart_postgres = clusters, restart_postgres
        self.stopping = threading.Event()
        self.kills, self.pg_restarts, self.restart_error = 0, 0, ""
        self.pg_restart_at = time.monotonic() + size_hint_s * 0.4

    def run(self) -> None:
        while not self.stopping.wait(random.uniform(0.5, 2.0)):
            victim = random.randrange(len(self.clusters))
            self.clusters[victim].kill()
            self.kills += 1
            self.clusters[victim] = common.qcluster(**DRILL_ENV)
            if self.restart_postgres and not self.pg_restarts and not self.restart_error \
                    and time.monotonic() >= self.pg_restart_at:
                try:
                    postgres_restart(self.restart_postgres)
                    self.pg_restarts += 1
                except (OSError, subprocess.SubprocessError) as exc:
                    self.restart_error = repr(exc)  # reported; the drill then fails


def default_restart_command() -> str:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return f"pg_ctlcluster --skip-systemctl-redirect {version} main restart"


def postgres_restart(command: str) -> None:
    subprocess.run(shlex.split(command), check=True, timeout=120)


def _wait_settled(ids: list[str], timeout: float) -> None:
    from django.db import OperationalError, connection

    from workflows.models import WorkItem

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not WorkItem.objects.filter(pk__in=ids, status__in=WorkItem.ACTIVE).exists():
                return
        except OperationalError:
            connection.close()  # PostgreSQL was restarted under us
        time.sleep(1)


def _chaos_while_draining(results: list[dict], seconds: float) -> None:
    """Keep killing while the engine works through the backlog, until 90% are done."""
    from django.db import OperationalError, connection

    from workflows.models import WorkItem

    ids = [r["work_id"] for r in results if r["status"] == 202]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            active = WorkItem.objects.filter(pk__in=ids, status__in=WorkItem.ACTIVE).count()
        except OperationalError:
            connection.close()
            active = len(ids)
        if active <= len(ids) // 10:
            return
        time.sleep(0.5)


def classify(results: list[dict]) -> dict:
    """Every 202'd work id into exactly one class; every other caller by its answer."""
    from django.db import connection

    from workflows.models import StepRun, WorkItem

    connection.close()
    accepted = [r["work_id"] for r in results if r["status"] == 202]
    items = {str(pk): (status, error) for pk, status, error in
             WorkItem.objects.filter(pk__in=accepted).values_list("pk", "status", "error")}
    ledger = Counter((str(w), s) for w, s in StepRun.objects.filter(
        work_item_id__in=accepted, status="completed").values_list("work_item_id", "step_id"))
    duplicated = {w for (w, _s), n in ledger.items() if n > 1}
    classes: Counter = Counter()
    for work_id in accepted:
        status, error = items.get(work_id, (None, None))
        if work_id in duplicated:
            classes["duplicated"] += 1
        elif status == "completed":
            steps = [n for (w, _s), n in ledger.items() if w == work_id]
            classes["completed_once" if len(steps) == 2 else "completed_without_ledger"] += 1
        elif status == "failed":
            classes["failed_with_reason" if error and error.get("code") else
                    "failed_without_reason"] += 1
        else:
            classes["lost"] += 1  # no row, or never finished
    others = Counter()
    for r in results:
        if r["status"] == 202:
            continue
        if r.get("problem"):
            others[f"{r['status']} {r['problem']}"] += 1
        else:
            others[f"unclear: {r['status'] or r.get('error')}"] += 1
    return {"accepted": len(accepted), "not_accepted": sum(others.values()),
            "classes": dict(classes), "rejections": dict(others)}


def crash_drill(size: int, clusters_n: int, restart_postgres: str) -> dict:
    fixture = common.fixture_create("drill")
    port = common.free_port()
    web = common.gunicorn(port)
    clusters = [common.qcluster(**DRILL_ENV) for _ in range(clusters_n)]
    chaos = Chaos(clusters, restart_postgres, size_hint_s=size / 150)
    started = time.monotonic()
    try:
        chaos.start()
        results = _fire(f"http://127.0.0.1:{port}/v1/intake/{fixture.intake_id}",
                        fixture.token, size)
        _chaos_while_draining(results, seconds=30 + size / 50)
        chaos.stopping.set()
        chaos.join()
        for i, cluster in enumerate(clusters):
            if not cluster.alive():
                clusters[i] = common.qcluster(**DRILL_ENV)
        ids = [r["work_id"] for r in results if r["status"] == 202]
        _wait_settled(ids, timeout=60 + size / 10)
        summary = classify(results)
    finally:
        for cluster in clusters:
            cluster.stop()
        web.stop()
    classes = summary["classes"]
    bad = (classes.get("lost", 0) + classes.get("duplicated", 0)
           + classes.get("completed_without_ledger", 0)
           + classes.get("failed_without_reason", 0)
           + sum(n for k, n in summary["rejections"].items() if k.startswith("unclear")))
    restarted_as_asked = chaos.pg_restarts == (1 if restart_postgres else 0)
    return {"drill": "crash", "size": size, "clusters": clusters_n, "kills": chaos.kills,
            "postgres_restarts": chaos.pg_restarts, "restart_error": chaos.restart_error,
            "seconds": round(time.monotonic() - started), **summary,
            "passed": bad == 0 and restarted_as_asked}


def _slow_request(port: int, path: str, token: str, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    sock.sendall(head.encode() + body[:5])
    return sock


def _finish(sock: socket.socket, rest: bytes) -> int | None:
    with contextlib.suppress(OSError):
        sock.sendall(rest)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return int(data.split(b" ", 2)[1])
    return None


def sigterm_drill(size: int) -> dict:
    from workflows.models import WorkItem

    fixture = common.fixture_create("sigterm")
    port = common.free_port()
    path = f"/v1/intake/{fixture.intake_id}"
    web = common.gunicorn(port, workers=2)
    body = json.dumps({"n": -1, "slow": True}).encode()
    results: list[dict] = []
    try:
        loader = threading.Thread(target=lambda: results.extend(
            _fire(f"http://127.0.0.1:{port}{path}", fixture.token, size, threads=8)))
        loader.start()
        time.sleep(1.0)
        # Two requests caught mid-body (one per sync worker would be the worst case).
        slow = [_slow_request(port, path, fixture.token, body) for _ in range(2)]
        time.sleep(0.3)
        web.proc.terminate()  # SIGTERM to the arbiter
        time.sleep(0.5)
        slow_codes = [_finish(sock, body[5:]) for sock in slow]
        loader.join()
        web.proc.wait(60)
    finally:
        web.stop()
    accepted = [r["work_id"] for r in results if r["status"] == 202]
    stored = WorkItem.objects.filter(pk__in=accepted).count()
    answers = Counter(str(r["status"] or r.get("error")) for r in results)
    server_errors = sum(n for k, n in answers.items() if k.startswith("5"))
    return {"drill": "sigterm", "size": size, "answers": dict(answers),
            "accepted": len(accepted), "accepted_and_stored": stored,
            "in_flight_mid_body": slow_codes,
            "passed": stored == len(accepted) and server_errors == 0
            and all(code in (202, None) for code in slow_codes)
            and any(code == 202 for code in slow_codes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("drill", choices=["crash", "sigterm", "all"], nargs="?", default="all")
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--restart-postgres", action="store_true",
                        help="restart the PostgreSQL cluster once (never on a shared server)")
    parser.add_argument("--restart-command", default="",
                        help="how to restart it (default: pg_ctlcluster ... main restart)")
    args = parser.parse_args()
    restart = ((args.restart_command or default_restart_command())
               if args.restart_postgres else "")
    common.django_setup()
    reports = []
    drills = []
    if args.drill in ("crash", "all"):
        drills.append(lambda: crash_drill(args.size, args.clusters, restart))
    if args.drill in ("sigterm", "all"):
        drills.append(lambda: sigterm_drill(min(args.size, 2000)))
    for drill in drills:  # the load average beside each drill's figures
        start = common.load()
        report = drill()
        report["load"] = {"start": start, "end": common.load()}
        reports.append(report)
    for report in reports:
        print(json.dumps(report, indent=2))
    (common.ROOT / "var").mkdir(exist_ok=True)
    (common.ROOT / "var" / "drills.json").write_text(json.dumps(reports, indent=2))
    sys.exit(0 if all(r["passed"] for r in reports) else 1)


if __name__ == "__main__":
    main()
