"""Enqueue-to-start latency on an idle system: commit a work item, measure until its first
step's attempt row starts. One item at a time, with a pause between, on a warm cluster.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/enqueue_latency.py --items 200
"""

import argparse
import time

from _common import make_org, quantile, setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.3)
    args = parser.parse_args()
    setup()
    from django.db import transaction

    from tests.processes import QCluster, wait_for
    from workflows.models import Step, StepRun, Workflow
    from workflows.services import work_item_create

    org = make_org()
    workflow = Workflow.objects.create(org=org, name="one", slug="one")
    Step.objects.create(workflow=workflow, position=1, name="t", kind="transform",
                        config={"expression": "input"})
    cluster = QCluster(AUXOT_WORKERS="2").start()
    latencies = []
    try:
        time.sleep(3)  # let the cluster start and go idle
        for n in range(args.items):
            with transaction.atomic():
                item = work_item_create(workflow=workflow, input={"n": n})
            run = wait_for(lambda pk=item.pk: StepRun.objects.filter(work_item_id=pk).first(),
                           timeout=30, interval=0.002, what="first step start")
            latencies.append((run.started_at - item.created_at).total_seconds() * 1000)
            time.sleep(args.pause)
    finally:
        cluster.stop()
    print(f"items={args.items} p50_ms={quantile(latencies, 0.5):.1f} "
          f"p99_ms={quantile(latencies, 0.99):.1f} max_ms={max(latencies):.1f}")


if __name__ == "__main__":
    main()
