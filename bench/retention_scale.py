"""Retention on a large history: one `manage.py retention_run` pass over bench/admin_scale.py's
seed, moved back in time, while triggers keep coming and the engine runs them.

    .venv/bin/python bench/retention_scale.py \
        --database-url postgres://postgres@127.0.0.1:5432/auxot_ret_scale \
        [--items 200000] [--age-days 40] [--rate 5] [--baseline 20] [--after 10] \
        [--budget-seconds 3600] [--via command|schedule] [--reseed] [--explain-only]
        [--json var/retention_scale.json]

Seeding (bench/admin_scale.py's cast and history, by COPY): the finished items are moved back
`--age-days` (default 40: they finished 40 to 130 days ago, so with the default 30/90 days
about 45 % are deleted and the rest redacted); the unfinished ones stay recent and are parked
(next_run_at null) so that the engine runs the bench's triggers only. The seeded database is
kept as a template, `<name>_seed`; each run starts from a fresh copy of it (CREATE DATABASE
... TEMPLATE), then `migrate` (timed: a new index is built there). --reseed seeds again.
Both names must have a `scale` part (bench/admin_scale.py's check).

Then, in one rolled-back transaction, one delete batch and one redact batch of the busiest
intake and of the items started without an intake run under a query capture: each query's
time, and EXPLAIN (ANALYZE, BUFFERS) of the slowest ones (--explain-only stops there).

Then gunicorn (2 workers, a free port) and a qcluster start on the copy, with the
`auxot.retention` schedule moved a day ahead (it would otherwise start a second pass), and a
fresh intake is triggered `--rate` times a second: `--baseline` seconds alone, during the
pass (`manage.py retention_run` as a child process), and `--after` seconds after it; then,
the processes stopped, a second pass that finds nothing due (what each later hourly run
costs). `--via schedule`: the pass is the schedule's instead, run by one of the cluster's
two workers (its next run set to now), timed by its audited batches. Printed per
phase: triggers, non-202 answers, POST latency p50/p95/max, and from the items themselves
time to finish (created_at to finished_at) p50/p95/max. During the pass, every 0.5 s: the
pass's RSS, the oldest open transaction on the database (the pass's own batches included),
backends waiting on a lock (with their statements and their blockers'), and the batches
audited so far (their rate per quarter of the pass shows whether a batch gets dearer as the
backlog shrinks). Nothing here asserts a timing.
Autovacuum, when the server has it on, may analyze or vacuum during the pass; the load
average of the machine is printed at the start and the end.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import admin_scale, common

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/auxot_retention_scale"
TABLES = ["workflows_workitem", "workflows_steprun", "intakes_callbackdelivery",
          "intakes_callbackattempt", "auxot_auditevent"]
BATCH_EVENTS = ("work_items.deleted", "work_items.redacted")


def _admin_connect(url: str):
    import psycopg

    return psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True)


def _exists(conn, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def _clone(url: str, source: str, target: str) -> None:
    """DROP target; CREATE target TEMPLATE source (nobody may be connected to either)."""
    from psycopg import sql

    with _admin_connect(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(target)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(target), sql.Identifier(source)))


def prepare(url: str, items: int, age_days: float, reseed: bool) -> dict:
    """A fresh copy of the seeded history in `url`'s database, migrated (Django set up)."""
    import random

    name = admin_scale.scale_database_check(url)
    seed_name = f"{name}_seed"
    admin_scale.scale_database_check(url.rsplit("/", 1)[0] + "/" + seed_name)
    with _admin_connect(url) as conn:
        have_seed = _exists(conn, seed_name)
    info = {}
    if have_seed and not reseed:
        _clone(url, seed_name, name)
        started = time.monotonic()
        common.django_setup()  # migrate: what a release of this code would do
        info["migrate_seconds"] = round(time.monotonic() - started, 1)
        print(f"copied {seed_name}; migrate took {info['migrate_seconds']} s", flush=True)
        return info
    common.django_setup()
    from django.db import connection

    started = time.monotonic()
    admin_scale.database_empty()
    casts = admin_scale.cast_create()
    counts = admin_scale.history_copy(casts, items, random.Random(20261201), age_days=age_days)
    with connection.cursor() as cursor:
        # The engine runs the bench's own triggers only.
        cursor.execute("UPDATE workflows_workitem SET next_run_at = NULL "
                       "WHERE finished_at IS NULL")
        for table in TABLES:
            cursor.execute(f"VACUUM (ANALYZE) {table}")
        cursor.execute("ANALYZE")
    info["seed_seconds"] = round(time.monotonic() - started, 1)
    print(f"seeded in {info['seed_seconds']} s: "
          + ", ".join(f"{t} {n}" for t, n in counts.items()), flush=True)
    connection.close()
    _clone(url, name, seed_name)
    return info


def table_counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        out = {}
        for table in TABLES:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (names from TABLES)
            out[table] = cursor.fetchone()[0]
        return out


# --- one batch of each kind, captured and explained ----------------------------------------

class _Rollback(Exception):
    pass


def probe(explain: int) -> list[dict]:
    """One delete and one redact batch of the busiest intake and of the no-intake scope,
    in a transaction rolled back: every query's time, and the slowest ones' plans."""
    from django.db import connection, transaction
    from django.db.models import Count
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from intakes import retention
    from intakes.models import Intake
    from workflows.models import WorkItem

    busiest = (WorkItem.objects.exclude(intake=None).values("intake")
               .annotate(n=Count("pk")).order_by("-n").first())
    intake = Intake.objects.select_related("org").get(pk=busiest["intake"])
    scopes = [(intake.org, intake, WorkItem.objects.filter(intake=intake))]
    for org, scope_intake, items in retention._scopes():
        if scope_intake is None:
            scopes.append((org, None, items))
            break
    now = timezone.now()
    batch = int(os.environ.get("AUXOT_RETENTION_BATCH", "500"))
    found = []
    try:
        with transaction.atomic():
            for org, scope_intake, items in scopes:
                redact_days, delete_days = retention.intake_retention(scope_intake)
                scope = scope_intake.name if scope_intake else f"org:{org.slug}"
                for kind, work, days in (("delete", retention._delete, delete_days),
                                         ("redact", retention._redact, redact_days)):
                    with CaptureQueriesContext(connection) as captured:
                        started = time.perf_counter()
                        count = next(work(org, scope_intake, items, days, now=now,
                                          batch=batch), 0)
                        wall = (time.perf_counter() - started) * 1000
                    queries = captured.captured_queries
                    print(f"  {kind} batch of {scope}: {count} items, {wall:.0f} ms, "
                          f"{len(queries)} queries", flush=True)
                    for query in queries:
                        found.append({"scope": scope, "kind": kind, "sql": query["sql"],
                                      "ms": float(query["time"]) * 1000})
            # An INSERT run again would collide with the rows it wrote: not explained.
            slowest = sorted((q for q in found if not q["sql"].startswith("INSERT")),
                             key=lambda q: -q["ms"])
            for query in slowest[:explain]:
                with connection.cursor() as cursor, transaction.atomic():
                    cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query['sql']}")
                    query["plan"] = "\n".join(row[0] for row in cursor.fetchall())
                    transaction.set_rollback(True)
            raise _Rollback
    except _Rollback:
        pass
    return found


# --- the pass under load ------------------------------------------------------------------

class Triggers(threading.Thread):
    """POST to the intake `rate` times a second; each answer's time, status and work id."""

    def __init__(self, url: str, token: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.rate = url, rate
        self.token = token
        self.sent: list[dict] = []
        self.phase = "baseline"
        self._halt = threading.Event()

    def run(self) -> None:
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        period, n = 1 / self.rate, 0
        next_at = time.monotonic()
        while not self._halt.is_set():
            phase, started = self.phase, time.monotonic()
            try:
                response = session.post(self.url, json={"n": n}, timeout=30)
                status = response.status_code
                work_id = response.json().get("work_id") if status == 202 else None
            except Exception as exc:  # a timeout or a refused connection: a failure here
                status, work_id = repr(exc)[:80], None
            self.sent.append({"phase": phase, "ms": (time.monotonic() - started) * 1000,
                              "status": status, "work_id": work_id})
            n += 1
            next_at += period
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def _sample(conn, dbname: str, pid: int) -> dict:
    rss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    row = conn.execute(
        "SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0),"
        "       count(*) FILTER (WHERE wait_event_type = 'Lock') "
        "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
        "AND xact_start IS NOT NULL", [dbname]).fetchone()
    # Who waits on whom: each waiting backend's statement and its blockers' statements.
    waits = [f"{row[0][:70]!r} waits on {row[1]!r}" for row in conn.execute(
        "SELECT w.query, (SELECT string_agg(left(b.query, 70), ' | ') FROM pg_stat_activity b "
        "WHERE b.pid = ANY(pg_blocking_pids(w.pid))) FROM pg_stat_activity w "
        "WHERE w.datname = %s AND w.wait_event_type = 'Lock'", [dbname]).fetchall()]
    batches = conn.execute("SELECT count(*) FROM auxot_auditevent WHERE event = ANY(%s)",
                           [list(BATCH_EVENTS)]).fetchone()[0]
    return {"t": time.monotonic(), "rss_kib": rss, "oldest_xact_s": float(row[0]),
            "lock_waiters": row[1], "waits": waits, "batches": batches}


def retention_pass(url: str, budget: float) -> dict:
    """`manage.py retention_run` as a child; sampled every 0.5 s; its rusage at the end."""
    import psycopg

    argv = [sys.executable, "manage.py", "retention_run", "--budget-seconds", str(budget)]
    samples = []
    with tempfile.TemporaryFile() as out, psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=common.ROOT, env=common.base_env(), stdout=out,
                                stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            samples.append(_sample(conn, common.database_name(url), proc.pid))
            time.sleep(0.5)
        wall = time.monotonic() - started
        samples.append(_sample(conn, common.database_name(url), 0))
        out.seek(0)
        text = out.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    found = re.search(r"redacted (\d+), deleted (\d+)", text)
    redacted, deleted = (int(found[1]), int(found[2])) if found else (0, 0)
    return {"seconds": wall, "exit": proc.returncode, "output": text.strip()[-2000:],
            "redacted": redacted, "deleted": deleted,
            "peak_rss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime,
            "samples": [{**s, "t": s["t"] - started} for s in samples]}


def scheduled_pass(url: str, cluster_pid: int, triggers: "Triggers",
                   timeout: float = 1800, quiet: float = 5.0) -> dict:
    """The schedule's own pass, run by one of the cluster's two workers: its next run set to
    now. django-q2 keeps no record of a successful task here (save_limit -1), so the pass
    is timed by its audited batches: from the first to the last, the pass over when none
    came for `quiet` seconds. The counts are the sums of those audit rows. The triggers'
    phase turns to "during" at the first batch. Peak RSS: the highest of the cluster's
    processes (the worker that ran the pass, or one that ran triggers)."""
    import psycopg
    from django.utils import timezone
    from django_q.models import Schedule

    from intakes.retention import SCHEDULE_NAME

    dbname = common.database_name(url)
    samples = []
    with psycopg.connect(url, autocommit=True) as conn:
        first = _sample(conn, dbname, 0)["batches"]
        Schedule.objects.filter(name=SCHEDULE_NAME).update(next_run=timezone.now())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sample = _sample(conn, dbname, 0)
            if sample["batches"] > first or samples:
                if not samples:
                    triggers.phase = "during"
                samples.append(sample)
                since = min(s["t"] for s in samples if s["batches"] == sample["batches"])
                if sample["t"] - since >= quiet:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError("the scheduled pass did not finish")
        sums = dict(conn.execute(
            "SELECT event, sum((extra->>'count')::int) FROM auxot_auditevent "
            "WHERE event = ANY(%s) GROUP BY event", [list(BATCH_EVENTS)]).fetchall())
    # The last sample that saw a new batch ends the pass.
    end = min((s for s in samples if s["batches"] == samples[-1]["batches"]),
              key=lambda s: s["t"])
    samples = [s for s in samples if s["t"] <= end["t"]]
    start = samples[0]["t"]
    peak = max((common.peak_rss_kib(pid) for pid in common.children(cluster_pid)), default=0)
    redacted = int(sums.get("work_items.redacted") or 0)
    deleted = int(sums.get("work_items.deleted") or 0)
    return {"seconds": end["t"] - start, "exit": 0,
            "output": f"(audited) redacted {redacted}, deleted {deleted}",
            "redacted": redacted, "deleted": deleted, "peak_rss_kib": peak,
            "cpu_s": float("nan"), "samples": [{**s, "t": s["t"] - start} for s in samples]}


def _phase_stats(sent: list[dict], finished: dict, phase: str) -> dict:
    rows = [s for s in sent if s["phase"] == phase]
    lat = [s["ms"] for s in rows]
    ok = [s for s in rows if s["status"] == 202]
    done = [finished[s["work_id"]] for s in ok if finished.get(s["work_id"]) is not None]
    return {"triggers": len(rows), "non_202": len(rows) - len(ok),
            "post_ms": [common.percentile(lat, 50), common.percentile(lat, 95),
                        max(lat, default=float("nan"))],
            "finished": len(done),
            "finish_ms": [common.percentile(done, 50), common.percentile(done, 95),
                          max(done, default=float("nan"))]}


def schedule_postpone() -> None:
    """A cluster's scheduler would start a pass of its own: the seed's schedule is due."""
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import Schedule

    from intakes.retention import SCHEDULE_NAME

    Schedule.objects.filter(name=SCHEDULE_NAME).update(
        next_run=timezone.now() + timedelta(days=1))


def under_load(url: str, args) -> dict:
    from django.db import connection

    from tests.processes import wait_for
    from workflows.models import WorkItem

    schedule_postpone()
    fixture = common.fixture_create("retention-load")
    connection.close()
    port = common.free_port()
    web = common.gunicorn(port, workers=2)
    cluster = common.qcluster()
    triggers = None
    try:
        time.sleep(3)
        triggers = Triggers(f"http://127.0.0.1:{port}/v1/intake/{fixture.intake_id}",
                            fixture.token, args.rate)
        triggers.start()
        time.sleep(args.baseline)
        triggers.phase = "during"
        if args.via == "schedule":
            result = scheduled_pass(url, cluster.pid, triggers)
        else:
            result = retention_pass(url, args.budget_seconds)
        triggers.phase = "after"
        time.sleep(args.after)
        triggers.stop()
        ids = [s["work_id"] for s in triggers.sent if s["work_id"]]
        items = WorkItem.objects.filter(pk__in=ids)
        with contextlib.suppress(Exception):
            wait_for(lambda: items.filter(finished_at__isnull=False).count() == len(ids),
                     timeout=120, interval=0.5, what="every trigger's item to finish")
    finally:
        try:
            if triggers is not None and triggers.is_alive():
                triggers.stop()
        finally:
            cluster.stop()
            web.stop()
    finished = {str(pk): (f - c).total_seconds() * 1000 if f else None
                for pk, c, f in WorkItem.objects.filter(pk__in=ids).values_list(
                    "pk", "created_at", "finished_at")}
    result["phases"] = {phase: _phase_stats(triggers.sent, finished, phase)
                        for phase in ("baseline", "during", "after")}
    return result


def _quarters(samples: list[dict]) -> list[float]:
    """Batches per second in each quarter of the pass."""
    if len(samples) < 8:
        return []
    end = samples[-1]["t"]
    out = []
    for q in range(4):
        lo = min(samples, key=lambda s: abs(s["t"] - end * q / 4))
        hi = min(samples, key=lambda s: abs(s["t"] - end * (q + 1) / 4))
        out.append((hi["batches"] - lo["batches"]) / max(hi["t"] - lo["t"], 1e-9))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--age-days", type=float, default=40)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--rate", type=float, default=5, help="triggers per second")
    parser.add_argument("--baseline", type=float, default=20)
    parser.add_argument("--after", type=float, default=10)
    parser.add_argument("--budget-seconds", type=float, default=3600)
    parser.add_argument("--via", choices=["command", "schedule"], default="command",
                        help="the pass as `manage.py retention_run` (a process of its own), "
                             "or as the cluster runs it (the schedule, in one of its workers, "
                             "its own time budget)")
    parser.add_argument("--explain", type=int, default=4, help="plans of the N slowest queries")
    parser.add_argument("--explain-only", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    admin_scale.scale_database_check(args.database_url)
    os.environ["DATABASE_URL"] = args.database_url
    print("loadavg start={:.2f} {:.2f} {:.2f}".format(*common.load()), flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "load_start": common.load()}
    report["prepare"] = prepare(args.database_url, args.items, args.age_days, args.reseed)
    schedule_postpone()
    report["before"] = table_counts()
    print("rows before: " + ", ".join(f"{t} {n}" for t, n in report["before"].items()))
    print("\none batch of each kind (rolled back):", flush=True)
    queries = probe(args.explain)
    for query in sorted(queries, key=lambda q: -q["ms"]):
        print(f"  {query['ms']:7.1f} ms  {query['kind']} {query['scope']}: {query['sql'][:150]}")
    for query in sorted(queries, key=lambda q: -q["ms"]):
        if query.get("plan"):
            print(f"\n--- {query['kind']} {query['scope']}: {query['ms']:.1f} ms\n"
                  f"{query['sql'][:600]}\n{query['plan']}")
    report["probe"] = queries
    if args.explain_only:
        return
    print(f"\nloadavg before the pass={common.load()}", flush=True)
    result = under_load(args.database_url, args)
    report["pass"] = result
    report["after"] = table_counts()
    # What each later run costs when nothing is due: the schedule's every hour.
    again = retention_pass(args.database_url, args.budget_seconds)
    report["second_pass"] = {k: v for k, v in again.items() if k != "samples"}
    report["load_end"] = common.load()
    rows = result["redacted"] + result["deleted"]
    samples = result["samples"]
    rss = [s["rss_kib"] for s in samples if s["rss_kib"]]
    print(f"\npass: exit {result['exit']}, {result['seconds']:.1f} s, redacted "
          f"{result['redacted']}, deleted {result['deleted']} ({rows / result['seconds']:.0f} "
          f"items/s), CPU {result['cpu_s']:.1f} s, peak RSS {result['peak_rss_kib'] / 1024:.0f} "
          + ("MiB; RSS at 10 %/50 %/end of the pass: "
             + " / ".join(f"{rss[int(f * (len(rss) - 1))] / 1024:.0f}" for f in (0.1, 0.5, 1.0))
             + " MiB" if rss else "MiB"))
    print(f"  output: {result['output'][-300:]}")
    print(f"  oldest open transaction seen: {max(s['oldest_xact_s'] for s in samples):.2f} s; "
          f"max backends waiting on a lock: {max(s['lock_waiters'] for s in samples)}")
    for wait in sorted({w for s in samples for w in s["waits"]}):
        print(f"    lock wait seen: {wait}")
    print("  batches/s per quarter of the pass: "
          + ", ".join(f"{q:.1f}" for q in _quarters(samples)))
    print("rows after: " + ", ".join(f"{t} {n}" for t, n in report["after"].items()))
    print(f"second pass, nothing due, no load: {again['seconds']:.2f} s "
          f"(redacted {again['redacted']}, deleted {again['deleted']}), "
          f"CPU {again['cpu_s']:.1f} s")
    for phase, stats in result["phases"].items():
        print(f"  {phase:8s} triggers {stats['triggers']:4d}, non-202 {stats['non_202']}, "
              "POST ms p50/p95/max {:.0f}/{:.0f}/{:.0f}, ".format(*stats["post_ms"])
              + f"finished {stats['finished']}, "
              "created→finished ms p50/p95/max {:.0f}/{:.0f}/{:.0f}".format(*stats["finish_ms"]))
    print("loadavg end={:.2f} {:.2f} {:.2f}".format(*report["load_end"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
