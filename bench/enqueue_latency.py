"""Enqueue-to-start latency on an idle system: commit a work item, and read afterwards when
its first step's attempt row started. One item at a time, on a warm cluster, with a pause
between items drawn at random from [pause/2, 3*pause/2] (a fixed pause phase-locks the
samples to any periodic poll in the path and measures the same point of its cycle every
time). Nothing polls for the result meanwhile: a poller would load the database and the
CPU the measured path runs on.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/enqueue_latency.py --items 200 [--broker redis] [--idle 20]

`--broker redis` uses django-q2's Redis broker at REDIS_URL (default
redis://127.0.0.1:6379/12). `--idle N` first measures what the idle cluster costs for N
seconds: its database transactions/s and its processes' CPU ms/s. Prints the load average
at the start and the end.
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.3, help="mean pause between items")
    parser.add_argument("--broker", choices=common.BROKERS, default="orm")
    parser.add_argument("--idle", type=float, default=0,
                        help="seconds to measure the idle cluster's cost first (0: skip)")
    args = parser.parse_args()
    # This process commits the items: it wakes the workers as a web process on that broker.
    os.environ.update(common.broker_env(args.broker))
    common.django_setup()
    from django.db import transaction

    from tests.processes import wait_for
    from workflows.models import Step, StepRun, Workflow
    from workflows.services import work_item_create

    print("loadavg start={:.2f} {:.2f} {:.2f}".format(*common.load()), flush=True)
    common.broker_purge(args.broker)
    org = common.org_create("engine")
    workflow = Workflow.objects.create(org=org, name="one", slug="one")
    Step.objects.create(workflow=workflow, position=1, name="t", kind="transform",
                        config={"expression": "input"})
    cluster = common.qcluster(AUXOT_WORKERS="2", **common.broker_env(args.broker))
    items, idle = [], None
    try:
        time.sleep(3)  # let the cluster start and go idle
        if args.idle:
            idle = common.idle_cost(cluster.pid, args.idle)
        first = work_item_create(workflow=workflow, input={"n": -1})  # warm: not counted
        wait_for(lambda: StepRun.objects.filter(work_item=first).exists(), timeout=60,
                 interval=0.1, what="the warm-up item")
        for n in range(args.items):
            with transaction.atomic():
                items.append(work_item_create(workflow=workflow, input={"n": n}))
            time.sleep(random.uniform(args.pause / 2, args.pause * 3 / 2))
        runs = StepRun.objects.filter(work_item__in=items, attempt=1)
        wait_for(lambda: runs.count() == len(items), timeout=60, interval=0.1,
                 what="every item's first step")
    finally:
        cluster.stop()
    created = {item.pk: item.created_at for item in items}
    latencies = [(started - created[pk]).total_seconds() * 1000
                 for pk, started in runs.values_list("work_item_id", "started_at")]
    if idle:
        print(f"idle cluster ({idle['seconds']:.0f} s): "
              f"{idle['transactions_per_s']:.1f} transactions/s, "
              f"{idle['cpu_ms_per_s']:.1f} CPU ms/s")
    print("loadavg end={:.2f} {:.2f} {:.2f}".format(*common.load()))
    print(f"broker={args.broker} items={args.items} "
          f"p50_ms={common.percentile(latencies, 50):.1f} "
          f"p99_ms={common.percentile(latencies, 99):.1f} max_ms={max(latencies):.1f}")


if __name__ == "__main__":
    main()
