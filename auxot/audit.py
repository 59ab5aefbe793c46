"""Audit retention: `intake.rejected` rows expire after AUXOT_AUDIT_REJECTED_RETENTION_DAYS.

Every other audit row is kept forever. On PostgreSQL a trigger refuses UPDATE and DELETE on
the table; the prune sets a transaction-local flag the trigger honours for rejected rows only.
The prune runs hourly as a django-q2 schedule (see intakes/housekeeping.py).
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from auxot.models import AuditEvent
from auxot.services import audit_record

REJECTED = "intake.rejected"


def audit_rejected_prune(*, now: datetime) -> int:
    """Delete `intake.rejected` rows older than the retention; audited as `audit.pruned`."""
    days = settings.AUXOT_AUDIT_REJECTED_RETENTION_DAYS
    cutoff = now - timedelta(days=days)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('auxot.audit_prune', 'on', true)")
        deleted, _ = AuditEvent.objects.filter(
            event__startswith=REJECTED, created_at__lt=cutoff).delete()
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('auxot.audit_prune', '', true)")
        if deleted:
            audit_record(event="audit.pruned", org=None, now=now, actor_label="retention",
                         extra={"event": REJECTED, "deleted": deleted, "retention_days": days,
                                "before": cutoff.isoformat()})
    return deleted
