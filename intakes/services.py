import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from apikeys.models import ApiKey
from auxot.errors import NOT_FOUND_DETAIL, ApplicationError, NotFoundError
from auxot.models import Membership, Organization, Team
from auxot.services import audit_record
from intakes.models import Intake
from intakes.secrets import secret_encrypt, signing_secret_generate
from intakes.ssrf import RefusedDestination, callback_url_validate, url_redact
from workflows.models import Workflow, WorkItem
from workflows.services import work_item_create


def _not_found() -> NotFoundError:
    return NotFoundError(NOT_FOUND_DETAIL)


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise _not_found() from None


def intake_create(
    *, org: Organization, workflow: Workflow, name: str, team: Team | None = None, created_by=None,
    callback_url: str = "",
) -> Intake:
    """Create an intake with its first callback signing secret.

    The plain secret is on the returned object as `signing_secret`, for the one answer that
    shows it; only its encrypted form is stored.
    """
    if workflow.org_id != org.pk:
        raise ApplicationError("That workflow belongs to another organization.")
    if team is not None:
        if team.org_id != org.pk:
            raise ApplicationError("That team belongs to another organization.")
        if not org.has_teams:
            raise ApplicationError(
                "Assigning an intake to a team needs the Business or Enterprise plan.",
                code="forbidden",
            )
    if callback_url:
        callback_url_checked(callback_url)
    now = timezone.now()
    secret = signing_secret_generate()
    with transaction.atomic():
        intake = Intake.objects.create(
            org=org, workflow=workflow, name=name.strip(), team=team, created_by=created_by,
            created_at=now, callback_url=callback_url, secret_rotated_at=now,
            signing_secret_encrypted=secret_encrypt(secret),
        )
        audit_record(event="intake.created", org=org, actor_user=created_by, obj=intake, now=now,
                     extra={"name": intake.name, "workflow": workflow.name,
                            "team": team.name if team else None,
                            "callback_url": url_redact(callback_url) if callback_url else None})
    intake.signing_secret = secret
    return intake


def callback_url_checked(url: str) -> str:
    """The SSRF URL policy as a 400 problem (for the header and the intake's setting)."""
    try:
        return callback_url_validate(url)
    except RefusedDestination as exc:
        raise ApplicationError(str(exc), code="invalid_request") from None


def intake_set_active(*, intake: Intake, active: bool, actor=None) -> bool:
    """Deactivate or reactivate. Returns False when it already was in that state."""
    now = timezone.now()
    with transaction.atomic():
        changed = Intake.objects.filter(pk=intake.pk, active=not active).update(
            active=active, deactivated_at=None if active else now
        )
        if changed:
            audit_record(event="intake.reactivated" if active else "intake.deactivated",
                         org=intake.org, actor_user=actor, obj=intake, now=now,
                         extra={"name": intake.name})
    intake.refresh_from_db()
    return bool(changed)


def intake_for_key(*, intake_id: str, key: ApiKey) -> Intake:
    """The active intake this key may call, or the one 404 for every other case."""
    pk = _parse_uuid(intake_id)
    intake = Intake.objects.select_related("workflow").filter(pk=pk, active=True).first()
    if intake is None or intake.org_id != key.org_id or not intake.workflow.active:
        raise _not_found()
    if key.kind == ApiKey.Kind.TEAM:
        if intake.team_id != key.team_id:
            raise _not_found()
        return intake
    memberships = Membership.objects.filter(user_id=key.user_id, org_id=key.org_id)
    if intake.team_id is not None:
        memberships = memberships.filter(teams=intake.team_id)
    if not memberships.exists():
        raise _not_found()
    return intake


def intake_trigger(*, intake: Intake, key: ApiKey, payload: Any, ip: str | None,
                   correlation_id: str = "", callback_url: str = "") -> WorkItem:
    """Accept one trigger: the item and its queue entry commit together, or not at all."""
    if callback_url:
        callback_url_checked(callback_url)
    with transaction.atomic():
        item = work_item_create(
            workflow=intake.workflow, intake=intake, input=payload, key=key, ip=ip,
            correlation_id=correlation_id,
        )
        if callback_url:
            # Same transaction, before the worker can see the item (it may finish at once).
            item.callback_url = callback_url
            item.save(update_fields=["callback_url"])
        return item


def work_item_for_key(*, intake: Intake, work_id: str) -> WorkItem:
    pk = _parse_uuid(work_id)
    item = WorkItem.objects.select_related("workflow").filter(pk=pk, intake=intake).first()
    if item is None:
        raise _not_found()
    return item
