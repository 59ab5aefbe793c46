"""Engine alone: a pre-loaded backlog of N items on a K-step transform workflow, one qcluster.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/engine_overhead.py --items 10000 --steps 2 --workers 2 \
        [--broker redis]

Prints items/s (from cluster start to the last completion, start-up included), the steady
rate (first step start to last finish), the median time from an item's first step start
to its finish (the steps do no work: this is what the engine costs), the broker's message count
sampled every 100 ms during the run (ORM broker: OrmQ rows, queued plus in flight; Redis
broker: the list's length, queued only), and the load average before and after. Active
items left by earlier runs of this script are deleted first, so they cannot inflate the
figure. `--broker redis` uses django-q2's Redis broker at REDIS_URL (default
redis://127.0.0.1:6379/12). bench/run.py runs the same case for its "engine alone" rows.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def _leftovers_drop(broker: str) -> None:
    from workflows.models import WorkItem

    WorkItem.objects.filter(workflow__org__slug__startswith="engine-",
                            status__in=WorkItem.ACTIVE).delete()
    common.broker_purge(broker)


def engine_alone(*, items: int, steps: int = 2, workers: int = 2, broker: str = "orm") -> dict:
    """Commit `items` items, start a qcluster on `broker`, time it until all are completed."""
    from django.db import transaction
    from django.db.models import Max, Min

    from tests.processes import wait_for
    from workflows.models import Step, Workflow, WorkItem
    from workflows.services import work_item_create

    _leftovers_drop(broker)
    org = common.org_create("engine")
    workflow = Workflow.objects.create(org=org, name="steps", slug="steps")
    for position in range(1, steps + 1):
        Step.objects.create(workflow=workflow, position=position, name=f"t{position}",
                            kind="transform", config={"expression": "{n: input.n, p: previous}"})
    with transaction.atomic():
        for n in range(items):
            work_item_create(workflow=workflow, input={"n": n})
    rows = WorkItem.objects.filter(workflow=workflow)
    load_before = common.load()
    depth = common.BrokerDepth(broker)
    started = time.monotonic()
    cluster = common.qcluster(AUXOT_WORKERS=str(workers), **common.broker_env(broker))
    depth.start()
    try:
        wait_for(lambda: rows.filter(status="completed").count() == items,
                 timeout=max(120, items), interval=0.25, what="all items")
        elapsed = time.monotonic() - started
    finally:
        messages = depth.stop()
        cluster.stop()
    per_item = [
        (row["finished_at"] - row["first"]).total_seconds() * 1000
        for row in rows.annotate(first=Min("step_runs__started_at")).values(
            "finished_at", "first")
    ]
    span = rows.aggregate(first=Min("step_runs__started_at"), last=Max("finished_at"))
    steady = (span["last"] - span["first"]).total_seconds()
    return {"broker": broker, "items": items, "steps": steps, "workers": workers,
            "elapsed_s": elapsed, "items_per_s": items / elapsed,
            "steady_items_per_s": items / steady, "steady_s": steady,
            "median_first_step_start_to_finish_ms": common.median(per_item),
            "broker_messages": messages,
            "load": {"start": load_before, "end": common.load()}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--broker", choices=common.BROKERS, default="orm")
    args = parser.parse_args()
    common.django_setup()
    print("loadavg start={:.2f} {:.2f} {:.2f}".format(*common.load()), flush=True)
    r = engine_alone(items=args.items, steps=args.steps, workers=args.workers,
                     broker=args.broker)
    print(f"broker={r['broker']} items={r['items']} steps={r['steps']} "
          f"workers={r['workers']} elapsed_s={r['elapsed_s']:.2f} "
          f"(includes ~1-2 s qcluster start-up)")
    print(f"items_per_s={r['items_per_s']:.1f} "
          f"steps_per_s={r['items'] * r['steps'] / r['elapsed_s']:.1f}")
    print(f"steady_items_per_s={r['steady_items_per_s']:.1f} (first step start to last "
          f"finish, {r['steady_s']:.2f} s)")
    # A batch's attempts start and finish together: this is the batch's time, per item.
    print(f"median_first_step_start_to_finish_ms="
          f"{r['median_first_step_start_to_finish_ms']:.2f}")
    m = r["broker_messages"]
    print(f"broker_messages max={m['max']} median={m['median']:.0f} samples={m['samples']}")
    print("loadavg before={:.2f} {:.2f} {:.2f}".format(*r["load"]["start"]),
          "after={:.2f} {:.2f} {:.2f}".format(*r["load"]["end"]))


if __name__ == "__main__":
    main()
