"""The drain's claim under EXPLAIN ANALYZE, for the two shapes a fair claim must survive.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/auxot_claim_bench \
        .venv/bin/python bench/claim_explain.py [--big 100000] [--orgs 1000] [--each 3]

Case 1: one organization with `--big` due items and another with one. Case 2: `--orgs`
organizations with `--each` due items each. For each, the claim of 32 runs under
EXPLAIN (ANALYZE, BUFFERS) in a transaction that is rolled back (nothing is claimed), three
times; the plan of the last and the three execution times are printed. PostgreSQL only.
Items of earlier runs of this script are deleted first, and at the end.
"""

import argparse
import sys
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


class _Rollback(Exception):
    pass


def _clear() -> None:
    from workflows.models import WorkItem

    WorkItem.objects.filter(org__slug__startswith="explain-").delete()


def _items(workflow, count: int, now) -> None:
    from workflows.models import WorkItem

    rows = [WorkItem(id=uuid.uuid4(), workflow=workflow, org_id=workflow.org_id,
                     created_at=now - timedelta(microseconds=count - n),
                     next_run_at=now - timedelta(microseconds=count - n), enqueued_at=now)
            for n in range(count)]
    for start in range(0, len(rows), 5000):
        WorkItem.objects.bulk_create(rows[start:start + 5000])


def _workflow(label: str):
    from workflows.models import Workflow

    return Workflow.objects.create(org=common.org_create(f"explain-{label}"), name="f",
                                   slug="f")


def _explain(limit: int = 32) -> tuple[list[float], str]:
    from django.db import connection, transaction
    from django.utils import timezone

    from workflows.batch import _CLAIM_PG
    from workflows.engine import _lease
    from workflows.models import WorkItem

    table = connection.ops.quote_name(WorkItem._meta.db_table)
    times, plan = [], ""
    for _ in range(3):
        now = timezone.now()
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + _CLAIM_PG.format(t=table), {
                    "token": "x" * 32, "lease": _lease(None, now), "status": "running",
                    "now": now, "limit": limit, "cursor": 0})
                lines = [row[0] for row in cursor.fetchall()]
                raise _Rollback
        except _Rollback:
            pass
        plan = "\n".join(lines)
        times.append(float(lines[-1].split()[-2]))  # "Execution Time: N ms"
    return times, plan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--big", type=int, default=100000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--each", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave case 1's items (no case 2)")
    args = parser.parse_args()
    common.django_setup()
    from django.db import connection
    from django.utils import timezone

    if connection.vendor != "postgresql":
        sys.exit("PostgreSQL only")
    _clear()
    print("loadavg start={:.2f} {:.2f} {:.2f}".format(*common.load()), flush=True)
    now = timezone.now()
    _items(_workflow("big"), args.big, now - timedelta(minutes=1))
    _items(_workflow("small"), 1, now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE workflows_workitem")
    times, plan = _explain()
    print(f"== case 1: one org with {args.big} due items, one with 1: execution ms {times}")
    print(plan)
    if args.keep:
        return
    _clear()
    for number in range(args.orgs):
        _items(_workflow(f"o{number}"), args.each, now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE workflows_workitem")
    times, plan = _explain()
    print(f"== case 2: {args.orgs} orgs with {args.each} due items each: execution ms {times}")
    print(plan)
    _clear()
    print("loadavg end={:.2f} {:.2f} {:.2f}".format(*common.load()))


if __name__ == "__main__":
    main()
