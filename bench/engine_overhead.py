"""Engine overhead: a 5-step transform workflow, N items, one qcluster with 2 workers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/engine_overhead.py --items 2000

Prints items/s (backlog of N items, from cluster start to the last completion) and the
median per-step overhead (an item's first step start to its finish, divided by 5: the
steps do no work, so this is what the engine costs per step).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    common.django_setup()
    from django.db import transaction
    from django.db.models import Min

    from tests.processes import wait_for
    from workflows.models import Step, Workflow, WorkItem
    from workflows.services import work_item_create

    org = common.org_create("engine")
    workflow = Workflow.objects.create(org=org, name="five", slug="five")
    for position in range(1, 6):
        Step.objects.create(workflow=workflow, position=position, name=f"t{position}",
                            kind="transform", config={"expression": "{n: input.n, p: previous}"})
    with transaction.atomic():
        for n in range(args.items):
            work_item_create(workflow=workflow, input={"n": n})
    items = WorkItem.objects.filter(workflow=workflow)
    started = time.monotonic()
    cluster = common.qcluster(AUXOT_WORKERS=str(args.workers))
    try:
        wait_for(lambda: items.filter(status="completed").count() == args.items,
                 timeout=max(120, args.items), interval=0.25, what="all items")
        elapsed = time.monotonic() - started
    finally:
        cluster.stop()
    per_step = [
        (row["finished_at"] - row["first"]).total_seconds() / 5 * 1000
        for row in items.annotate(first=Min("step_runs__started_at")).values(
            "finished_at", "first")
    ]
    print(f"items={args.items} workers={args.workers} elapsed_s={elapsed:.2f} "
          f"(includes ~1-2 s qcluster start-up)")
    print(f"items_per_s={args.items / elapsed:.1f} steps_per_s={args.items * 5 / elapsed:.1f}")
    print(f"median_per_step_overhead_ms={common.median(per_step):.2f}")


if __name__ == "__main__":
    main()
