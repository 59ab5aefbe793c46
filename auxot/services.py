"""Services shared by every app: the audit trail."""

from typing import Any

from django.utils import timezone

from auxot.models import AuditEvent, Organization


def audit_record(
    *,
    event: str,
    org: Organization | None,
    actor_user: Any = None,
    actor_key_lookup: str = "",
    actor_label: str = "",
    obj: Any = None,
    ip: str | None = None,
    extra: dict | None = None,
    now=None,
) -> AuditEvent:
    """Append one audit row. Call it inside the transaction that makes the change."""
    return AuditEvent.objects.create(
        org=org,
        created_at=now or timezone.now(),
        event=event,
        actor_user=actor_user if getattr(actor_user, "pk", None) else None,
        actor_key_lookup=actor_key_lookup,
        actor_label=actor_label or (str(actor_user) if getattr(actor_user, "pk", None) else ""),
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        ip=ip,
        extra=extra or {},
    )


def audit_records(*, rows: list[dict]) -> list[AuditEvent]:
    """Many audit rows in one INSERT: each dict takes audit_record's arguments (no user).
    For the engine's batches; call it inside the transaction that makes the changes."""
    now = timezone.now()
    return AuditEvent.objects.bulk_create([
        AuditEvent(org=row.get("org"), created_at=row.get("now") or now, event=row["event"],
                   actor_key_lookup=row.get("actor_key_lookup", ""),
                   actor_label=row.get("actor_label", ""),
                   object_type=row["obj"]._meta.label_lower if row.get("obj") is not None else "",
                   object_id=str(row["obj"].pk) if row.get("obj") is not None else "",
                   ip=row.get("ip"), extra=row.get("extra") or {})
        for row in rows])
