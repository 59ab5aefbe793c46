"""The benchmark suite: `make bench` (or `python bench/run.py`). See BENCHMARKS.md.

Against gunicorn (2 sync workers) and PostgreSQL, with wrk at 16 connections, medians of
--runs runs, interleaved with the two ceilings on the same server in the same run:
  1. trigger POST vs a bare DRF view doing one INSERT + COMMIT,
  2. poll GET vs a bare DRF GET of one row by primary key,
  3. enqueue -> first step start on an idle system (qcluster, 2 workers),
  4. end to end: a 2-step transform workflow, 2 workers, items/s and POST -> completed,
  5. peak RSS of a web worker and a qcluster worker after --items items.
Prints a Markdown report and writes var/bench.json.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
POST_LUA = """
wrk.method = "POST"
wrk.body = '{"customer": "Acme", "n": 1}'
wrk.headers["Content-Type"] = "application/json"
%s
"""


def _auth_lua(token: str | None) -> str:
    return f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""


def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * UNITS[unit]


def wrk(url: str, *, seconds: int, script: str | None = None) -> dict:
    argv = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script or "")
    argv[1:1] = ["-s", lua.name]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:  # a ceiling or endpoint that errors measures nothing
        raise RuntimeError(f"{url}: {bad.group(1)} non-2xx answers\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def http_load(base: str, fixture: common.Fixture, seconds: int, runs: int) -> dict:
    import requests

    auth = {"Authorization": f"Bearer {fixture.token}"}
    trigger_url = f"{base}/v1/intake/{fixture.intake_id}"
    work = requests.post(trigger_url, json={"n": 0}, headers=auth, timeout=10).json()
    cases = {
        "insert_ceiling": (f"{base}/bench/insert", POST_LUA % ""),
        "trigger": (trigger_url, POST_LUA % _auth_lua(fixture.token)),
        "get_ceiling": (f"{base}/bench/row/{fixture.intake_id}", None),
        "poll": (work["status_url"].replace("http://testserver", base),
                 _auth_lua(fixture.token)),
    }
    for url, script in cases.values():  # warm both workers' connections and caches
        wrk(url, seconds=1, script=script)
    results: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(runs):  # interleaved: drift on a shared box hits all four alike
        for name, (url, script) in cases.items():
            results[name].append(wrk(url, seconds=seconds, script=script))
    _discard_load_items(fixture)
    return {name: {"runs": runs_, **{m: common.median([r[m] for r in runs_])
                                     for m in ("rps", "p50", "p99")}}
            for name, runs_ in results.items()}


def _discard_load_items(fixture: common.Fixture) -> None:
    """The HTTP load left thousands of queued items: drop them so the engine starts idle."""
    from django_q.models import OrmQ

    from workflows.models import WorkItem

    WorkItem.objects.filter(intake_id=fixture.intake_id).delete()
    OrmQ.objects.all().delete()  # also the INSERT ceiling's rows


def _post_many(url: str, token: str, count: int, threads: int = 16) -> list[str]:
    import requests

    local = threading.local()

    def post(i: int) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Bearer {token}"
        response = local.session.post(url, json={"n": i, "customer": "c"}, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["work_id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, range(count)))


def _wait_terminal(ids: list[str], timeout: float) -> None:
    from workflows.models import WorkItem

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        open_ = WorkItem.objects.filter(pk__in=ids, status__in=WorkItem.ACTIVE).count()
        if open_ == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{open_} items still open after {timeout}s")


def engine_latency(base: str, fixture: common.Fixture, samples: int) -> dict:
    """Idle system: one trigger at a time; created_at -> the first step's started_at."""
    import requests

    from workflows.models import StepRun

    url = f"{base}/v1/intake/{fixture.intake_id}"
    auth = {"Authorization": f"Bearer {fixture.token}"}
    # Idle means a started, warm cluster: one item through it first (start-up can take
    # seconds on a loaded box and is not enqueue latency).
    warm = requests.post(url, json={"n": -1}, headers=auth, timeout=10).json()["work_id"]
    _wait_terminal([warm], 120)
    ids = []
    for i in range(samples):
        response = requests.post(url, json={"n": i}, timeout=10,
                                 headers={"Authorization": f"Bearer {fixture.token}"})
        ids.append(response.json()["work_id"])
        time.sleep(0.3)
    _wait_terminal(ids, 120)
    runs = (StepRun.objects.filter(work_item_id__in=ids, step__position=1, attempt=1)
            .values_list("started_at", "work_item__created_at", "work_item__finished_at"))
    start = [(s - c).total_seconds() * 1000 for s, c, _ in runs]
    done = [(f - c).total_seconds() * 1000 for _, c, f in runs]
    return {"samples": len(start), "start_p50": common.percentile(start, 50),
            "start_p99": common.percentile(start, 99), "done_p50": common.percentile(done, 50),
            "done_p99": common.percentile(done, 99)}


def end_to_end(base: str, fixture: common.Fixture, items: int) -> dict:
    from django.db.models import Max, Min

    from workflows.models import WorkItem

    url = f"{base}/v1/intake/{fixture.intake_id}"
    posted_at = time.monotonic()
    ids = _post_many(url, fixture.token, items)
    post_seconds = time.monotonic() - posted_at
    _wait_terminal(ids, 60 + items / 20)
    rows = WorkItem.objects.filter(pk__in=ids)
    span = rows.aggregate(first=Min("created_at"), last=Max("finished_at"))
    latency = [(f - c).total_seconds() * 1000
               for c, f in rows.values_list("created_at", "finished_at")]
    seconds = (span["last"] - span["first"]).total_seconds()
    return {"items": items, "completed": rows.filter(status="completed").count(),
            "items_per_s": items / seconds, "post_per_s": items / post_seconds,
            "p50": common.percentile(latency, 50), "p99": common.percentile(latency, 99)}


def report_http(http: dict) -> str:
    ins, get = http["insert_ceiling"], http["get_ceiling"]
    trig, poll = http["trigger"], http["poll"]
    return "\n".join([
        "| endpoint | req/s | p50 ms | p99 ms | ratio to ceiling |",
        "| --- | --- | --- | --- | --- |",
        f"| ceiling: DRF POST, one INSERT + COMMIT | {ins['rps']:.0f} | {ins['p50']:.1f} | "
        f"{ins['p99']:.1f} | 1.00 |",
        f"| **trigger POST** | {trig['rps']:.0f} | {trig['p50']:.1f} | {trig['p99']:.1f} | "
        f"**{trig['rps'] / ins['rps']:.2f}** (target >= 0.9) |",
        f"| ceiling: DRF GET one row by pk | {get['rps']:.0f} | {get['p50']:.1f} | "
        f"{get['p99']:.1f} | 1.00 |",
        f"| **poll GET** | {poll['rps']:.0f} | {poll['p50']:.1f} | {poll['p99']:.1f} | "
        f"**{poll['rps'] / get['rps']:.2f}** (target >= 0.9) |",
    ])


def report(machine: str, http: dict, latency: dict, e2e: dict, memory: dict) -> str:
    lines = [
        f"Machine: {machine}", "", report_http(http), "",
        f"Enqueue -> first step start, idle, {latency['samples']} samples: "
        f"p50 {latency['start_p50']:.0f} ms, p99 {latency['start_p99']:.0f} ms "
        f"(target p50 < 100 ms); POST -> completed p50 {latency['done_p50']:.0f} ms, "
        f"p99 {latency['done_p99']:.0f} ms.",
        f"End to end, 2-step transform, 2 workers, {e2e['items']} items posted by 16 "
        f"threads: {e2e['items_per_s']:.0f} items/s (target >= 200), POST -> completed "
        f"p50 {e2e['p50']:.0f} ms, p99 {e2e['p99']:.0f} ms; completed "
        f"{e2e['completed']}/{e2e['items']}; posting ran at {e2e['post_per_s']:.0f} req/s.",
        f"Peak RSS after the run: web worker {memory['web_kib'] / 1024:.0f} MiB, "
        f"qcluster worker {memory['worker_kib'] / 1024:.0f} MiB, qcluster main "
        f"{memory['cluster_main_kib'] / 1024:.0f} MiB.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000, help="end-to-end items")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--http-only", action="store_true", help="only the wrk part")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    common.django_setup()
    fixture = common.fixture_create("bench")
    load_fixture = common.fixture_create("load")
    port = common.free_port()
    base = f"http://127.0.0.1:{port}"
    web = common.gunicorn(port, AUXOT_BENCH_CEILINGS="1", AUXOT_PUBLIC_BASE_URL=base)
    cluster = None
    try:
        http = http_load(base, load_fixture, args.seconds, args.runs)
        if args.http_only:
            print(report_http(http))
            return
        cluster = common.qcluster()
        latency = engine_latency(base, fixture, args.latency_samples)
        e2e = end_to_end(base, fixture, args.items)
        memory = {
            "web_kib": max(common.peak_rss_kib(p) for p in common.children(web.pid)),
            "worker_kib": max(common.peak_rss_kib(p) for p in common.children(cluster.pid)),
            "cluster_main_kib": common.peak_rss_kib(cluster.pid),
        }
    finally:
        if cluster:
            cluster.stop()
        web.stop()
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    text = report(machine, http, latency, e2e, memory)
    out = common.ROOT / "var" / "bench.json"
    out.write_text(json.dumps({"http": http, "latency": latency, "e2e": e2e,
                               "memory": memory}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
