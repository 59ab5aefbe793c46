"""The benchmark suite: `make bench` (or `python bench/run.py`). See BENCHMARKS.md.

Starts from an empty bench database: every table of DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/auxot_bench) is truncated first, and a database whose
name neither ends in "bench" nor has a "_bench_" part (auxot_bench_mine) is refused.
gunicorn runs 2 workers with the repository's gunicorn.conf.py, worker recycling off
(GUNICORN_MAX_REQUESTS=0) and AUXOT_BENCH_CEILINGS=1, the setting that mounts the two
ceiling views (POST /bench/insert, GET /bench/row/<pk>; never set it in production).

HTTP, wrk at 16 connections, medians of --runs runs interleaved with the ceilings:
  1. trigger POST vs a bare DRF view doing one INSERT + COMMIT,
  2. poll GET vs a bare DRF GET of one row by primary key.
Then for each broker of --broker (orm, redis, or both: orm,redis), 2 qcluster workers:
  3. the idle cluster's cost (database transactions/s, CPU ms/s), then enqueue -> first
     step start, one trigger at a time,
  4. engine alone: --engine-items items committed before the cluster starts,
  5. end to end: --items triggers posted by 16 threads while the cluster works: items/s,
     POST -> completed, and the broker's message count sampled every 100 ms,
  6. peak RSS of a web worker and a qcluster worker.
The Redis broker is django-q2's, at REDIS_URL (default redis://127.0.0.1:6379/12); only
the bench's queue key is cleared there. Every case prints the load average at its start
and end; the report and var/bench.json carry them beside the figures.
"""

import argparse
import json
import os
import platform
import random
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
from bench.engine_overhead import engine_alone

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
    """Idle system: one trigger at a time; created_at -> the first step's started_at. The
    pause between triggers is random (0.15-0.45 s): a fixed one phase-locks the samples to
    any periodic poll on the path and measures one point of its cycle every time."""
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
        response = requests.post(url, json={"n": i}, timeout=10, headers=auth)
        ids.append(response.json()["work_id"])
        time.sleep(random.uniform(0.15, 0.45))
    _wait_terminal(ids, 120)
    runs = (StepRun.objects.filter(work_item_id__in=ids, step__position=1, attempt=1)
            .values_list("started_at", "work_item__created_at", "work_item__finished_at"))
    start = [(s - c).total_seconds() * 1000 for s, c, _ in runs]
    done = [(f - c).total_seconds() * 1000 for _, c, f in runs]
    return {"samples": len(start), "start_p50": common.percentile(start, 50),
            "start_p99": common.percentile(start, 99), "done_p50": common.percentile(done, 50),
            "done_p99": common.percentile(done, 99)}


def end_to_end(base: str, fixture: common.Fixture, items: int, broker: str) -> dict:
    from django.db.models import Max, Min

    from workflows.models import WorkItem

    url = f"{base}/v1/intake/{fixture.intake_id}"
    depth = common.BrokerDepth(broker)
    depth.start()
    try:
        posted_at = time.monotonic()
        ids = _post_many(url, fixture.token, items)
        post_seconds = time.monotonic() - posted_at
        _wait_terminal(ids, 60 + items / 20)
    finally:
        messages = depth.stop()
    rows = WorkItem.objects.filter(pk__in=ids)
    span = rows.aggregate(first=Min("created_at"), last=Max("finished_at"))
    latency = [(f - c).total_seconds() * 1000
               for c, f in rows.values_list("created_at", "finished_at")]
    seconds = (span["last"] - span["first"]).total_seconds()
    return {"items": items, "completed": rows.filter(status="completed").count(),
            "items_per_s": items / seconds, "post_per_s": items / post_seconds,
            "p50": common.percentile(latency, 50), "p99": common.percentile(latency, 99),
            "broker_messages": messages}


def case(name: str, run, *args, **kwargs) -> dict:
    """Run one case with the load average printed (and kept) at its start and end."""
    start = common.load()
    print(f"-- {name}: start, load average {_load_text(start)}", flush=True)
    result = run(*args, **kwargs)
    result["load"] = {"start": start, "end": common.load()}
    print(f"-- {name}: done, load average {_load_text(result['load']['end'])}", flush=True)
    return result


def _load_text(load: list[float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def engine_cases(broker: str, args, fixture: common.Fixture) -> dict:
    """The engine's cases on one broker: idle cost and latency, engine alone, end to end."""
    common.broker_purge(broker)
    alone = case(f"{broker}: engine alone, {args.engine_items} items", engine_alone,
                 items=args.engine_items, steps=2, workers=2, broker=broker)
    port = common.free_port()
    base = f"http://127.0.0.1:{port}"
    web = common.gunicorn(port, AUXOT_PUBLIC_BASE_URL=base, **common.broker_env(broker))
    cluster = common.qcluster(**common.broker_env(broker))
    try:
        time.sleep(3)  # started and idle
        idle = case(f"{broker}: idle cluster", common.idle_cost, cluster.pid, args.idle_seconds)
        latency = case(f"{broker}: idle latency", engine_latency, base, fixture,
                       args.latency_samples)
        e2e = case(f"{broker}: end to end, {args.items} items", end_to_end, base, fixture,
                   args.items, broker)
        memory = {
            "web_kib": max(common.peak_rss_kib(p) for p in common.children(web.pid)),
            "worker_kib": max(common.peak_rss_kib(p) for p in common.children(cluster.pid)),
            "cluster_main_kib": common.peak_rss_kib(cluster.pid),
        }
    finally:
        cluster.stop()
        web.stop()
    return {"broker": broker, "idle": idle, "latency": latency, "alone": alone, "e2e": e2e,
            "memory": memory}


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


def report_engine(engines: list[dict]) -> str:
    lines = [
        "| broker | idle cluster | enqueue -> first step start, idle | engine alone, "
        "2-step transform, 2 workers | end to end while posting (16 threads) | "
        "POST -> completed, e2e | broker messages during e2e | peak RSS web / worker |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in engines:
        idle, lat, alone, e2e, mem = e["idle"], e["latency"], e["alone"], e["e2e"], e["memory"]
        msgs = e2e["broker_messages"]
        lines.append(
            f"| {e['broker']} | {idle['transactions_per_s']:.1f} transactions/s, "
            f"{idle['cpu_ms_per_s']:.0f} CPU ms/s (load {_load_text(idle['load']['start'])}) "
            f"| p50 **{lat['start_p50']:.1f} ms**, p99 {lat['start_p99']:.0f} ms "
            f"({lat['samples']} samples; load {_load_text(lat['load']['start'])} -> "
            f"{_load_text(lat['load']['end'])}) "
            f"| **{alone['items_per_s']:.0f} items/s** ({alone['steady_items_per_s']:.0f} "
            f"steady), {alone['items']} items (load {_load_text(alone['load']['start'])} -> "
            f"{_load_text(alone['load']['end'])}) "
            f"| **{e2e['items_per_s']:.0f} items/s**, {e2e['completed']}/{e2e['items']} "
            f"completed, accepted at {e2e['post_per_s']:.0f}/s (load "
            f"{_load_text(e2e['load']['start'])} -> {_load_text(e2e['load']['end'])}) "
            f"| p50 {e2e['p50']:.0f} ms, p99 {e2e['p99']:.0f} ms "
            f"| max {msgs['max']}, median {msgs['median']:.0f} ({msgs['samples']} samples) "
            f"| {mem['web_kib'] / 1024:.0f} / {mem['worker_kib'] / 1024:.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000, help="end-to-end items")
    parser.add_argument("--engine-items", type=int, default=10_000,
                        help="engine-alone items, committed before the cluster starts")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10,
                        help="how long the idle cluster's cost is measured")
    parser.add_argument("--broker", default="orm",
                        help="orm, redis, or both in this order: orm,redis (default orm)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--http-only", action="store_true", help="only the wrk part")
    group.add_argument("--engine-only", action="store_true", help="skip the wrk part")
    args = parser.parse_args()
    brokers = [b.strip() for b in args.broker.split(",") if b.strip()]
    if not brokers or any(b not in common.BROKERS for b in brokers):
        parser.error(f"--broker: one or more of {', '.join(common.BROKERS)}")
    if not args.engine_only and not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    common.bench_database_check(common.database_url())
    common.django_setup()
    common.bench_database_reset()
    machine = (f"{platform.platform()}, {os.cpu_count()} CPUs, "
               f"Python {platform.python_version()}")
    print(f"Machine: {machine}; load average at start {_load_text(common.load())}", flush=True)
    results: dict = {"machine": machine, "load_start": common.load()}
    text = []
    if not args.engine_only:
        load_fixture = common.fixture_create("load")
        port = common.free_port()
        base = f"http://127.0.0.1:{port}"
        web = common.gunicorn(port, AUXOT_BENCH_CEILINGS="1", AUXOT_PUBLIC_BASE_URL=base,
                              **common.broker_env(brokers[0]))
        try:
            results["http"] = case("http", http_load, base, load_fixture, args.seconds,
                                   args.runs)
        finally:
            web.stop()
        text.append(report_http(results["http"]))
        text.append(f"(HTTP load average {_load_text(results['http']['load']['start'])} -> "
                    f"{_load_text(results['http']['load']['end'])})")
    if not args.http_only:
        fixture = common.fixture_create("bench")
        results["engine"] = [engine_cases(broker, args, fixture) for broker in brokers]
        text.append(report_engine(results["engine"]))
    results["load_end"] = common.load()
    out = common.ROOT / "var" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nMachine: {machine}\n")
    print("\n\n".join(text))
    print(f"\nLoad average: start {_load_text(results['load_start'])}, "
          f"end {_load_text(results['load_end'])}. Written to {out}.")


if __name__ == "__main__":
    main()
