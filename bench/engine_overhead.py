"""Engine alone: a pre-loaded backlog of N items on a K-step transform workflow, one qcluster.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/engine_overhead.py --items 10000 --steps 2 --workers 2

Prints items/s (from cluster start to the last completion, start-up included), the steady
rate (first step start to last finish), the median time from an item's first step start
to its finish (the steps do no work: this is what the engine costs), the broker's message count
sampled every 100 ms during the run (the ORM broker's OrmQ rows: queued plus in flight),
and the load average before and after. Active items left by earlier runs of this script
are deleted first, so they cannot inflate the figure.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def _leftovers_drop() -> None:
    from django_q.models import OrmQ

    from workflows.models import WorkItem

    WorkItem.objects.filter(workflow__org__slug__startswith="engine-",
                            status__in=WorkItem.ACTIVE).delete()
    OrmQ.objects.all().delete()


def _broker_sampler(stop: threading.Event, samples: list[int]) -> None:
    from django.db import connection
    from django_q.models import OrmQ

    while not stop.wait(0.1):
        samples.append(OrmQ.objects.count())
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    common.django_setup()
    from django.db import transaction
    from django.db.models import Max, Min

    from tests.processes import wait_for
    from workflows.models import Step, Workflow, WorkItem
    from workflows.services import work_item_create

    _leftovers_drop()
    org = common.org_create("engine")
    workflow = Workflow.objects.create(org=org, name="steps", slug="steps")
    for position in range(1, args.steps + 1):
        Step.objects.create(workflow=workflow, position=position, name=f"t{position}",
                            kind="transform", config={"expression": "{n: input.n, p: previous}"})
    with transaction.atomic():
        for n in range(args.items):
            work_item_create(workflow=workflow, input={"n": n})
    items = WorkItem.objects.filter(workflow=workflow)
    load_before = os.getloadavg()
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=_broker_sampler, args=(stop, samples), daemon=True)
    started = time.monotonic()
    cluster = common.qcluster(AUXOT_WORKERS=str(args.workers))
    sampler.start()
    try:
        wait_for(lambda: items.filter(status="completed").count() == args.items,
                 timeout=max(120, args.items), interval=0.25, what="all items")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        cluster.stop()
    sampler.join(5)
    per_item = [
        (row["finished_at"] - row["first"]).total_seconds() * 1000
        for row in items.annotate(first=Min("step_runs__started_at")).values(
            "finished_at", "first")
    ]
    span = items.aggregate(first=Min("step_runs__started_at"), last=Max("finished_at"))
    steady = (span["last"] - span["first"]).total_seconds()
    print(f"items={args.items} steps={args.steps} workers={args.workers} "
          f"elapsed_s={elapsed:.2f} (includes ~1-2 s qcluster start-up)")
    print(f"items_per_s={args.items / elapsed:.1f} "
          f"steps_per_s={args.items * args.steps / elapsed:.1f}")
    print(f"steady_items_per_s={args.items / steady:.1f} (first step start to last finish, "
          f"{steady:.2f} s)")
    # A batch's attempts start and finish together: this is the batch's time, per item.
    print(f"median_first_step_start_to_finish_ms={common.median(per_item):.2f}")
    print(f"broker_messages max={max(samples, default=0)} "
          f"median={common.median(samples):.0f} samples={len(samples)}")
    print("loadavg before={:.2f} {:.2f} {:.2f}".format(*load_before),
          "after={:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
