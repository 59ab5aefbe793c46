"""`manage.py retention_run`: the retention pass now (the schedule runs it every hour)."""

import argparse
import math

from django.core.management.base import BaseCommand

from intakes.retention import retention_run, retention_schedule_ensure


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds above 0")
    return value


class Command(BaseCommand):
    help = "Redact and delete finished work items past their intake's retention, now."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--budget-seconds", type=_seconds, default=3600.0,
                            help="stop starting new batches after this long (default 3600)")

    def handle(self, *args, budget_seconds: float, **options) -> None:
        retention_schedule_ensure()
        report = retention_run(budget_seconds=budget_seconds)
        more = "" if report.finished else " (time budget reached: run again)"
        self.stdout.write(f"redacted {report.redacted}, deleted {report.deleted}{more}")
        if report.failed:
            self.stderr.write(f"failed (see the log; the next run retries): "
                              f"{', '.join(report.failed)}")
