"""Enqueue-to-start latency on an idle system: commit a work item, measure until its first
step's attempt row starts. One item at a time, with a pause between, on a warm cluster.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_bench \
        .venv/bin/python bench/enqueue_latency.py --items 200
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.3)
    args = parser.parse_args()
    common.django_setup()
    from django.db import transaction

    from tests.processes import wait_for
    from workflows.models import Step, StepRun, Workflow
    from workflows.services import work_item_create

    org = common.org_create("engine")
    workflow = Workflow.objects.create(org=org, name="one", slug="one")
    Step.objects.create(workflow=workflow, position=1, name="t", kind="transform",
                        config={"expression": "input"})
    cluster = common.qcluster(AUXOT_WORKERS="2")
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
    print("loadavg={:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"items={args.items} p50_ms={common.percentile(latencies, 50):.1f} "
          f"p99_ms={common.percentile(latencies, 99):.1f} max_ms={max(latencies):.1f}")


if __name__ == "__main__":
    main()
