"""Services shared by every app: the audit trail."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from auxot.actor import acting
from auxot.auditbudget import AuditBudget, budget_source
from auxot.models import AuditEvent, Membership, Organization


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


NO_REQUEST = "outside a request"  # the actor of a deletion run from a shell or a script


def _deletion_origin(obj: Any, origin: Any) -> tuple[str, bool]:
    """(what was deleted that took `obj` with it, whether that is an organization). `origin`
    is the instance or the queryset whose delete() started it (Django's pre_delete)."""
    if origin is None or (type(origin) is type(obj) and origin.pk == obj.pk):
        return "itself", False
    if hasattr(origin, "model"):  # a queryset: the admin's "delete selected"
        return f"{origin.model._meta.label_lower} (several)", origin.model is Organization
    return f"{origin._meta.label_lower} {origin.pk} ({origin})", type(origin) is Organization


def audit_deletion(*, event: str, obj: Any, org: Organization, origin: Any,
                   extra: dict) -> AuditEvent:
    """Audit `obj` deleted, by itself or with what owns it (its team, its owner, its
    organization), as the admin's signed-in user when an admin page did it (auxot/actor.py).

    Called from a pre_delete receiver, inside the deletion's transaction. When the
    organization itself goes, the row is written without one: an organization that has audit
    rows cannot be deleted (the rows protect it), so this one must not hold it either."""
    actor, ip = acting()
    deleted_with, whole_org = _deletion_origin(obj, origin)
    if whole_org:
        extra = {**extra, "org": str(org)}
    return audit_record(event=event, org=None if whole_org else org, actor_user=actor,
                        actor_label="" if actor else NO_REQUEST, obj=obj, ip=ip,
                        extra={**extra, "deleted_with": deleted_with})


def admin_change_record(*, verb: str, obj: Any, org: Organization | None, actor: Any,
                        ip: str | None, extra: dict) -> AuditEvent:
    """Audit an add, change or delete made on an admin page whose model has no service of
    its own (teams, memberships, workflows and their steps, providers, users, schedules):
    `<model>.created|changed|deleted`, with what changed. Call it inside the transaction
    that makes the change (the admin's add, change and delete views run in one)."""
    if isinstance(obj, Organization) and verb == "deleted":
        # An organization's row would protect it from its own deletion (see audit_deletion).
        org, extra = None, {**extra, "org": str(obj)}
    return audit_record(event=f"{obj._meta.model_name}.{verb}", org=org, actor_user=actor,
                        obj=obj, ip=ip, extra={"object": str(obj)[:200], **extra})


def membership_deletion_record(*, membership: Membership, origin: Any) -> AuditEvent:
    """Audit a membership deleted: on its admin page, or with its user (an admin's delete
    page, a shell) or its organization. Without this, a member leaving was no org's row."""
    return audit_deletion(
        event="membership.deleted", obj=membership, org=membership.org, origin=origin,
        extra={"user": str(membership.user), "role": membership.role})


# --- sign-ins ------------------------------------------------------------------------------

SIGNED_IN = "user.logged_in"
SIGNED_OUT = "user.logged_out"
SIGN_IN_FAILED = "user.login_failed"
SIGN_IN_FORM = "sign-in form"  # the actor of a failed sign-in: nobody is signed in
USERNAME_KEPT = 150  # characters of a tried username (Django's usernames are at most 150)
# Anyone can fail a sign-in: the rows are budgeted like an intake's rejections (per web
# process, per minute, per source), the rest counted into the source's next row.
sign_in_failure_budget = AuditBudget(
    per_minute=lambda: settings.AUXOT_REJECTION_AUDIT_PER_MINUTE,
    per_source=lambda: settings.AUXOT_REJECTION_AUDIT_PER_SOURCE)


def _sign_in_orgs(user: Any) -> list[Organization | None]:
    """Where a user's sign-ins are logged: one row in each organization they are a member
    of (its admins and auditors see their member's sign-ins; no other organization does),
    or one row in none (superusers alone see it) for a user of no organization."""
    org_ids = Membership.objects.filter(user=user).order_by("org_id").values_list(
        "org_id", flat=True)
    return [Organization(pk=org_id) for org_id in org_ids] or [None]


def sign_in_record(*, event: str, user: Any, ip: str | None) -> list[AuditEvent]:
    """Audit a sign-in or sign-out (`user.logged_in`, `user.logged_out`) of `user`: one row
    per organization the user is a member of, or one without an organization."""
    now = timezone.now()
    with transaction.atomic():
        return [audit_record(event=event, org=org, actor_user=user, obj=user, ip=ip, now=now)
                for org in _sign_in_orgs(user)]


def sign_in_failure_record(*, username: Any, ip: str | None,
                           refused: str = "") -> list[AuditEvent]:
    """Audit a failed sign-in (`user.login_failed`). Never the password: only the username
    is read. `refused` says why a correct password did not sign the account in (the admin
    takes staff accounts only): written as `reason`, so an admin can tell a guessed password
    from a mistyped one. For an existing account (found as Django's backend finds it), one row per
    organization it is a member of, naming the account, not what was typed; for a username
    no account has, one row without an organization (superusers alone see it): a tenant
    never learns which names were tried, and a password typed into the username field
    reaches no tenant's log."""
    suppressed = sign_in_failure_budget.take((budget_source(ip), SIGN_IN_FAILED))
    if suppressed is None:
        return []  # a flood of guesses: counted, written as `suppressed` in the next row
    tried = "" if username is None else str(username).replace("\x00", "")[:USERNAME_KEPT]
    user_model = get_user_model()
    user = None
    if tried:
        try:
            user = user_model._default_manager.get_by_natural_key(tried)
        except user_model.DoesNotExist:
            user = None
    now = timezone.now()
    counted = {"suppressed": suppressed} if suppressed else {}
    if refused:
        counted["reason"] = refused
    with transaction.atomic():
        if user is None:
            return [audit_record(event=SIGN_IN_FAILED, org=None, actor_label=SIGN_IN_FORM,
                                 ip=ip, now=now,
                                 extra={"username": tried, "known": False, **counted})]
        return [audit_record(event=SIGN_IN_FAILED, org=org, actor_label=SIGN_IN_FORM,
                             obj=user, ip=ip, now=now,
                             extra={"user": str(user)[:USERNAME_KEPT], **counted})
                for org in _sign_in_orgs(user)]
