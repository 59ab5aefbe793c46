"""Fairness across organizations: org A's backlog, then a few items of org B, one qcluster.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/fairness.py --big 10000 --small 10 --steps 2 --workers 2

Commits `--big` items of org A, then `--small` items of org B (created after all of A's),
starts a qcluster and waits until every item is completed. Prints, from the first step
start of any item (the first claim): when B's last item finished, when A's last did, and
how many of A's items finished before B's last. With a claim in due order across orgs
(FIFO) B waits for nearly all of A; with a fair claim B is served in the first claims.
Active items of earlier runs of this script are deleted first.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def _workflow(org, steps: int):
    from workflows.models import Step, Workflow

    workflow = Workflow.objects.create(org=org, name="steps", slug="steps")
    for position in range(1, steps + 1):
        Step.objects.create(workflow=workflow, position=position, name=f"t{position}",
                            kind="transform", config={"expression": "{n: input.n, p: previous}"})
    return workflow


def fairness(*, big: int, small: int, steps: int = 2, workers: int = 2,
             broker: str = "orm") -> dict:
    from django.db import transaction
    from django.db.models import Min

    from tests.processes import wait_for
    from workflows.models import StepRun, WorkItem
    from workflows.services import work_item_create

    WorkItem.objects.filter(workflow__org__slug__startswith="fair-",
                            status__in=WorkItem.ACTIVE).delete()
    common.broker_purge(broker)
    flow_a = _workflow(common.org_create("fair-a"), steps)
    flow_b = _workflow(common.org_create("fair-b"), steps)
    with transaction.atomic():
        for n in range(big):
            work_item_create(workflow=flow_a, input={"n": n})
    with transaction.atomic():
        for n in range(small):
            work_item_create(workflow=flow_b, input={"n": n})
    rows = WorkItem.objects.filter(workflow__in=[flow_a, flow_b])
    load_before = common.load()
    cluster = common.qcluster(AUXOT_WORKERS=str(workers), **common.broker_env(broker))
    try:
        wait_for(lambda: rows.filter(status="completed").count() == big + small,
                 timeout=max(120, big), interval=0.25, what="all items")
    finally:
        cluster.stop()
    first = StepRun.objects.filter(work_item__in=rows).aggregate(at=Min("started_at"))["at"]
    a_done = sorted(WorkItem.objects.filter(workflow=flow_a).values_list("finished_at",
                                                                           flat=True))
    b_done = sorted(WorkItem.objects.filter(workflow=flow_b).values_list("finished_at",
                                                                           flat=True))
    return {"big": big, "small": small, "steps": steps, "workers": workers,
            "b_last_s": (b_done[-1] - first).total_seconds(),
            "b_median_s": common.median([(t - first).total_seconds() for t in b_done]),
            "a_last_s": (a_done[-1] - first).total_seconds(),
            "a_before_b_last": sum(1 for t in a_done if t < b_done[-1]),
            "load": {"start": load_before, "end": common.load()}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--big", type=int, default=10000, help="org A's items (first)")
    parser.add_argument("--small", type=int, default=10, help="org B's items (after A's)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--broker", choices=common.BROKERS, default="orm")
    args = parser.parse_args()
    common.django_setup()
    started = time.monotonic()
    r = fairness(big=args.big, small=args.small, steps=args.steps, workers=args.workers,
                 broker=args.broker)
    print(f"big={r['big']} small={r['small']} steps={r['steps']} workers={r['workers']} "
          f"(run {time.monotonic() - started:.0f} s)")
    print(f"B_last_finish_s={r['b_last_s']:.2f} B_median_finish_s={r['b_median_s']:.2f} "
          f"A_last_finish_s={r['a_last_s']:.2f} A_items_done_before_B_last="
          f"{r['a_before_b_last']} (seconds from the first step start)")
    print("loadavg before={:.2f} {:.2f} {:.2f}".format(*r["load"]["start"]),
          "after={:.2f} {:.2f} {:.2f}".format(*r["load"]["end"]))


if __name__ == "__main__":
    main()
