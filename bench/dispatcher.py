"""The callback dispatcher's CPU per attempt, alone: `python bench/dispatcher.py` (see
BENCHMARKS.md → Callbacks).

N finished items' deliveries are made due at a steady rate (`--rates`, deliveries/s; 0: all
at once, a backlog), to a healthy receiver in a process of its own (bench/outbound.py's,
so its CPU is not counted). A dispatcher runs in this process, started as qcluster starts
it; the figure is the CPU time of its threads only (utime + stime from /proc), divided by
the attempts, with the lateness of each first attempt (started - due) beside it. Each rate
runs once per `--spacing` (the claim loop's LOOK_SPACING, set for the case; 0 is a look per
delivery that comes due), on the same items re-armed, so the rows compare within one run.
Nice is off (AUXOT_CALLBACK_NICE=0): nothing else runs. Database: DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/auxot_bench_dispatcher, emptied first).
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL",
                      "postgres://postgres@127.0.0.1:5432/auxot_bench_dispatcher")
os.environ.update({"AUXOT_CALLBACK_ALLOW_HTTP": "1",
                   "AUXOT_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
                   "AUXOT_CALLBACK_NICE": "0"})

from bench import common


def _thread_cpu(tids: set[int]) -> float:
    total = 0
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended: its CPU is lost (the dispatcher's threads live until join)
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _arm(ids: list, rate: float) -> dict:
    """Make every delivery pending, unattempted and due at `rate`/s from 1 s from now."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from auxot import rawsql
    from intakes.models import CallbackAttempt, CallbackDelivery

    start = timezone.now() + timedelta(seconds=1)
    due = {pk: start + timedelta(seconds=index / rate if rate else 0)
           for index, pk in enumerate(ids)}
    CallbackAttempt.objects.all().delete()
    CallbackDelivery.objects.update(state="pending", attempts=0, lease_token="",
                                    delivered_at=None, last_status=None)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {rawsql.table(CallbackDelivery)} SET next_attempt_at = %s "  # noqa: S608 (names from _meta)
            "WHERE id = %s", [(at, pk) for pk, at in due.items()])
    return due


def case(ids: list, rate: float, spacing: float) -> dict:
    from intakes import dispatcher as module
    from intakes.models import CallbackAttempt, CallbackDelivery

    due = _arm(ids, rate)
    module.LOOK_SPACING = spacing
    before = set(threading.enumerate())
    dispatcher = module.Dispatcher().start()
    tids = {t.native_id for t in threading.enumerate() if t not in before}
    cpu_start, wall_start = _thread_cpu(tids), time.monotonic()
    deadline = wall_start + 120 + (len(ids) / rate if rate else 0)
    while CallbackDelivery.objects.filter(state="delivered").count() < len(ids):
        if time.monotonic() > deadline:
            dispatcher.join(5)
            raise SystemExit(f"not all {len(ids)} deliveries were delivered in time "
                             f"(rate {rate:g}/s, spacing {spacing:g} s)")
        time.sleep(0.1)
        tids |= {t.native_id for t in threading.enumerate() if t not in before}
    cpu = _thread_cpu(tids) - cpu_start
    wall = time.monotonic() - wall_start
    dispatcher.join(10)
    attempts = list(CallbackAttempt.objects.values_list("delivery_id", "started_at"))
    late = sorted((started - due[pk]).total_seconds() for pk, started in attempts)
    return {"rate": rate, "spacing": spacing, "attempts": len(attempts), "wall": wall,
            "cpu_ms": cpu * 1000 / len(attempts), "p50": common.percentile(late, 50),
            "p99": common.percentile(late, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="deliveries per case")
    parser.add_argument("--rates", default="20,100,200,0",
                        help="deliveries/s coming due, comma-separated (0: all at once)")
    parser.add_argument("--spacing", default="0,0.1",
                        help="LOOK_SPACING values to compare, comma-separated")
    args = parser.parse_args()
    # bench/outbound.py's receiver: HTTP/1.1 keep-alive, `200 ok` at once.
    receiver = subprocess.Popen([sys.executable, str(common.ROOT / "bench" / "outbound.py"),
                                 "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(receiver.stdout.readline())
        common.django_setup()
        common.bench_database_reset()
        from intakes.models import CallbackDelivery, Intake
        from workflows.batch import work_item_process
        from workflows.services import work_item_create

        fixture = common.fixture_create("dispatcher")
        Intake.objects.filter(pk=fixture.intake_id).update(
            callback_url=f"http://127.0.0.1:{port}/hook")
        intake = Intake.objects.select_related("workflow").get(pk=fixture.intake_id)
        for index in range(args.n):  # each finished item gets its delivery as in production
            item = work_item_create(workflow=intake.workflow, intake=intake, input={"n": index})
            work_item_process(work_id=item.pk, drain_seconds=0)
        ids = list(CallbackDelivery.objects.order_by("created_at").values_list("pk", flat=True))
        print(f"machine: {os.cpu_count()} cores; loadavg at start "
              "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print(f"{len(ids)} deliveries per case, healthy receiver (200 at once)")
        print("| due at | look spacing | CPU per attempt | due -> first attempt p50 / p99 "
              "| wall |")
        print("| --- | --- | --- | --- | --- |")
        for rate in (float(r) for r in args.rates.split(",")):
            for spacing in (float(s) for s in args.spacing.split(",")):
                row = case(ids, rate, spacing)
                print(f"| {f'{rate:g}/s' if rate else 'once (backlog)'} | {spacing:g} s "
                      f"| {row['cpu_ms']:.2f} ms | {row['p50']:.3f} / {row['p99']:.3f} s "
                      f"| {row['wall']:.1f} s |", flush=True)
        print("loadavg at end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        receiver.kill()


if __name__ == "__main__":
    main()
