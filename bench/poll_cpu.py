"""CPU and queries per poll, in process: `python bench/poll_cpu.py [-n 2000]`.

Django's full request stack (middleware, DRF) through the test client on the bench
database (DATABASE_URL), no HTTP server: the CPU a gunicorn worker spends per poll of a
pending, a running and a completed item, beside the GET ceiling (`/bench/row/<pk>`, one
row by primary key; AUXOT_BENCH_CEILINGS=1 is set here). CPU time (time.process_time), so
a busy box moves it less than wall time; the figures are medians of 5 rounds, interleaved.
Deletes the items it made.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("AUXOT_BENCH_CEILINGS", "1")

from bench import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000, help="requests per case and round")
    args = parser.parse_args()
    common.django_setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from workflows.models import WorkItem

    fixture = common.fixture_create("pollcpu")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {fixture.token}", HTTP_HOST="127.0.0.1")
    url = f"/v1/intake/{fixture.intake_id}"
    ids = {}
    for state in ("pending", "running", "completed"):
        ids[state] = client.post(url, data={"n": 1},
                                 content_type="application/json").json()["work_id"]
    now = timezone.now()
    WorkItem.objects.filter(pk=ids["running"]).update(
        status="running", started_at=now, lease_token="b" * 32,
        next_run_at=now + timezone.timedelta(hours=1))
    WorkItem.objects.filter(pk=ids["completed"]).update(
        status="completed", started_at=now, finished_at=now, output={"ok": 1}, next_run_at=None)
    cases = {f"poll {state}": f"{url}/work/{work_id}" for state, work_id in ids.items()}
    cases["GET ceiling"] = f"/bench/row/{fixture.intake_id}"
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    queries = {}
    try:
        for path in cases.values():
            for _ in range(50):
                assert client.get(path).status_code == 200
        for _ in range(5):
            for name, path in cases.items():
                started = time.process_time()
                for _ in range(args.n):
                    client.get(path)
                cpu[name].append((time.process_time() - started) * 1000 / args.n)
        for name, path in cases.items():
            with CaptureQueriesContext(connection) as captured:
                client.get(path)
            queries[name] = len(captured.captured_queries)
    finally:
        WorkItem.objects.filter(intake_id=fixture.intake_id).delete()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, -n {args.n}")
    print("| request | CPU ms (median of 5) | queries |\n| --- | --- | --- |")
    for name in cases:
        print(f"| {name} | {statistics.median(cpu[name]):.2f} | {queries[name]} |")


if __name__ == "__main__":
    main()
