"""Threads per web process vs trigger throughput, and triggers while long-polls wait:
`python bench/longpoll.py` (PostgreSQL, DATABASE_URL; see BENCHMARKS.md).

For each configuration `threads:cap:slots` (GUNICORN_THREADS, AUXOT_LONG_POLL_MAX_WAITERS,
AUXOT_WEB_ACTIVE_REQUESTS; 2 gthread processes, gunicorn.conf.py otherwise; `base@…` runs
the --baseline checkout instead, e.g. main's) one gunicorn is started, all of them at
once (each idle while another is measured), and wrk (16 connections) runs every case on
each configuration in turn, run after run, so a shared box's drift hits them alike:
the INSERT ceiling, the trigger POST, the GET ceiling and the poll GET; then the trigger
POST again while N clients long-poll (`?wait=` the run's length + 3 s) a pending item (no
qcluster runs, so it stays pending). A long-poll client whose wait the server refuses
(the per-process cap, AUXOT_LONG_POLL_MAX_WAITERS; answered at once with
`Auxot-Wait-Refused`) sleeps the `Retry-After` and asks again, as a well-behaved client
does.
"""

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.run import POST_LUA, _auth_lua, wrk


@dataclass(frozen=True)
class Config:
    label: str
    tree: Path
    threads: int
    cap: int  # AUXOT_LONG_POLL_MAX_WAITERS
    active: int  # AUXOT_WEB_ACTIVE_REQUESTS (0: no limit)

    @classmethod
    def parse(cls, text: str, baseline: Path | None) -> "Config":
        """`threads:cap:active`, or `base@threads:cap:active` to run the --baseline tree."""
        tree = common.ROOT
        if text.startswith("base@"):
            if baseline is None:
                raise SystemExit("base@... needs --baseline DIR")
            tree, text = baseline, text[len("base@"):]
        threads, cap, active = (int(part) for part in text.split(":"))
        label = f"{'baseline ' if tree != common.ROOT else ''}{threads}:{cap}:{active}"
        return cls(label, tree, threads, cap, active)


class LongPollers:
    """N client threads, each long-polling one pending item again and again."""

    def __init__(self, url: str, token: str, count: int, wait: float):
        self.url, self.token, self.count, self.wait = url, token, count, wait
        self.stop = threading.Event()
        self.waited = self.refused = self.errors = self.in_flight = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        while not self.stop.is_set():
            with self.lock:
                self.in_flight += 1
            try:
                response = session.get(self.url, params={"wait": self.wait}, timeout=60)
            except requests.RequestException:
                with self.lock:
                    self.errors += 1
                    self.in_flight -= 1
                time.sleep(1)
                continue
            refused = "Auxot-Wait-Refused" in response.headers
            with self.lock:
                self.in_flight -= 1
                if response.status_code != 200:
                    self.errors += 1
                elif refused:
                    self.refused += 1
                else:
                    self.waited += 1
            if refused or response.status_code != 200:
                self.stop.wait(float(response.headers.get("Retry-After", "1")))

    def __enter__(self) -> "LongPollers":
        for thread in self.threads:
            thread.start()
        time.sleep(2 if self.count else 0)  # all of them at the server, waiting
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()  # each returns when its wait (just past the measurement) ends
        for thread in self.threads:
            thread.join(60)


def _gunicorn(port: int, tree: Path, **env: str) -> common.Proc:
    """gunicorn (2 processes) from `tree`: this checkout, or another for a baseline."""
    proc = common.Proc([sys.executable, "-m", "gunicorn", "auxot.wsgi", "-b",
                        f"127.0.0.1:{port}", "-w", "2"], **env)
    proc.proc = subprocess.Popen(proc.argv, cwd=tree, env=proc.env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


@dataclass
class Server:
    config: Config
    proc: common.Proc
    cases: dict[str, tuple[str, str | None]]
    poll_url: str


def server_start(config: Config, fixture: common.Fixture) -> Server:
    import requests

    port = _port()
    base = f"http://127.0.0.1:{port}"
    proc = _gunicorn(port, config.tree, AUXOT_BENCH_CEILINGS="1", AUXOT_PUBLIC_BASE_URL=base,
                     GUNICORN_THREADS=str(config.threads), GUNICORN_MAX_REQUESTS="0",
                     AUXOT_LONG_POLL_MAX_WAITERS=str(config.cap),
                     # one key polls for every caller here: the per-key share would halve it
                     AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY=str(max(1, config.cap)),
                     AUXOT_WEB_ACTIVE_REQUESTS=str(config.active))
    auth = {"Authorization": f"Bearer {fixture.token}"}
    trigger_url = f"{base}/v1/intake/{fixture.intake_id}"
    for attempt in range(120):  # until the workers have booted
        try:
            work = requests.post(trigger_url, json={"n": 0}, headers=auth, timeout=10).json()
            break
        except requests.RequestException:
            if attempt == 119:
                proc.stop()
                raise
            time.sleep(0.5)
    cases = {
        "insert_ceiling": (f"{base}/bench/insert", POST_LUA % ""),
        "trigger": (trigger_url, POST_LUA % _auth_lua(fixture.token)),
        "get_ceiling": (f"{base}/bench/row/{fixture.intake_id}", None),
        "poll": (work["status_url"], _auth_lua(fixture.token)),
    }
    for url, script in cases.values():  # warm both processes
        wrk(url, seconds=1, script=script)
    return Server(config, proc, cases, work["status_url"])


def measure(server: Server, case: str, seconds: int, token: str) -> dict:
    """One wrk run; `trigger_with_N_waiting`: the trigger while N clients long-poll."""
    if case in server.cases:
        url, script = server.cases[case]
        return wrk(url, seconds=seconds, script=script)
    count = int(case.split("_")[2])
    url, script = server.cases["trigger"]
    with LongPollers(server.poll_url, token, count, wait=seconds + 3) as pollers:
        result = wrk(url, seconds=seconds, script=script)
        result.update(waiting=pollers.in_flight, refused=pollers.refused,
                      errors=pollers.errors)
    return result


_last_port = 0


def _port() -> int:
    """A free port from BENCH_PORTS (e.g. 18200-18299), else any free one."""
    import socket

    global _last_port
    low, _, high = os.environ.get("BENCH_PORTS", "").partition("-")
    ports = list(range(int(low), int(high) + 1)) if high else []
    start = ports.index(_last_port) + 1 if _last_port in ports else 0
    for port in ports[start:] + ports[:start]:  # never the one a server just left
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _last_port = port
            return port
    return common.free_port()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="32:24:0,16:12:4,4:2:0",
                        help="threads:long-poll cap:active-request slots, comma-separated; "
                        "base@... runs the --baseline checkout")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. main's)")
    parser.add_argument("--waiters", default="16", help="concurrent long-polls, e.g. 16,48")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    configs = [Config.parse(text, args.baseline) for text in args.configs.split(",")]
    waiters = [int(w) for w in args.waiters.split(",")]
    common.django_setup()
    fixture = common.fixture_create("longpoll")
    cases = ["insert_ceiling", "trigger", "get_ceiling", "poll",
             *(f"trigger_with_{count}_waiting" for count in waiters if count)]
    results: dict[tuple[str, str], list[dict]] = {}
    loads = []
    servers = []
    try:
        for config in configs:  # all at once: each case runs on each in turn
            servers.append(server_start(config, fixture))
        for run in range(args.runs):
            for case in cases:
                loads.append(_load())
                print(f"run {run + 1}: {case}, load {loads[-1]}", flush=True)
                for server in servers:
                    results.setdefault((server.config.label, case), []).append(
                        measure(server, case, args.seconds, fixture.token))
    finally:
        for server in servers:
            server.proc.stop()
        from workflows.models import WorkItem

        WorkItem.objects.filter(intake_id=fixture.intake_id).delete()
    results = dict(sorted(results.items(), key=lambda kv: [c.label for c in configs]
                          .index(kv[0][0])))
    print(f"\n{platform.platform()}, {os.cpu_count()} CPUs; load averages at each start: "
          f"{'; '.join(loads)}; after: {_load()}\n")
    print("| threads:cap:slots | case | req/s median (runs) | p50 ms | p99 ms | "
          "÷ ceiling | long-polls waiting at the end / answers refused |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (label, case), runs_ in results.items():
        rps = common.median([r["rps"] for r in runs_])
        ceiling = "get_ceiling" if case == "poll" else (
            "insert_ceiling" if case.startswith("trigger") else None)
        ratio = ""
        if ceiling:
            base = common.median([r["rps"] for r in results[(label, ceiling)]])
            ratio = f"{rps / base:.2f}"
        lp = (f"{min(r['waiting'] for r in runs_)}-{max(r['waiting'] for r in runs_)} / "
              f"{sum(r['refused'] for r in runs_)}" if "waiting" in runs_[0] else "")
        print(f"| {label} | {case} | {rps:,.0f} "
              f"({', '.join(format(r['rps'], ',.0f') for r in runs_)}) | "
              f"{common.median([r['p50'] for r in runs_]):.1f} | "
              f"{common.median([r['p99'] for r in runs_]):.1f} | {ratio} | {lp} |")


if __name__ == "__main__":
    main()
