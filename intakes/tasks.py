"""Dotted entry points for django-q2. Arguments are ids only; all state is in the database."""

from django.utils import timezone

from auxot.audit import audit_rejected_prune
from intakes.callbacks import callback_delivery_process
from intakes.idempotency import idempotency_prune
from intakes.ratelimit import ratelimit_prune


def callback_delivery_run(delivery_id: str) -> str | None:
    return callback_delivery_process(delivery_id=delivery_id)


# --- housekeeping: scheduled by intakes.housekeeping -------------------------------------
def idempotency_prune_run() -> int:
    return idempotency_prune(now=timezone.now())


def ratelimit_prune_run() -> int:
    return ratelimit_prune(now=timezone.now())


def audit_rejected_prune_run() -> int:
    return audit_rejected_prune(now=timezone.now())


def retention_run() -> str:
    from intakes.retention import retention_run as run
    from intakes.retention import retention_task_budget

    report = run(budget_seconds=retention_task_budget())
    failed = f", failed for {len(report.failed)} (logged)" if report.failed else ""
    return f"redacted {report.redacted}, deleted {report.deleted}{failed}"
