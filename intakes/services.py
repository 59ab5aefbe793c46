import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_recheck
from auxot.errors import (
    NOT_FOUND_DETAIL,
    ApplicationError,
    NotFoundError,
    ObjectGoneError,
    PermissionDeniedError,
    row_gone,
    row_refresh,
)
from auxot.models import Membership, Organization, Team
from auxot.outbound import RefusedDestination, url_check, url_redact
from auxot.secrets import free_text_check
from auxot.services import audit_deletion, audit_record
from intakes import idempotency, ratelimit
from intakes.accept import AccessRevoked, work_item_accept_write
from intakes.callbacks import callback_deliveries_retarget
from intakes.longpoll import item_state, work_item_wait
from intakes.lookup import (
    ACTOR_ROLES,
    access_grant,
    access_granted,
    intake_lookup,
    key_intake_lookup,
    work_item_lookup,
)
from intakes.models import Intake
from intakes.poll_lookup import PollRead, work_item_poll_lookup
from intakes.secrets import secret_encrypt, signing_secret_generate
from workflows.lookup import step_progress
from workflows.models import Workflow, WorkItem
from workflows.retention import json_paths_check, json_paths_redact
from workflows.services import work_item_new


def _not_found() -> NotFoundError:
    return NotFoundError(NOT_FOUND_DETAIL)


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise _not_found() from None


def intake_create(
    *, org: Organization, workflow: Workflow, name: str, team: Team | None = None, created_by=None,
    callback_url: str = "", ip: str | None = None, options: dict[str, Any] | None = None,
) -> Intake:
    """Create an intake with its first callback signing secret.

    `options`: any of INTAKE_SETTINGS (rate limit, retention, redact paths), checked as
    intake_update checks them. The plain secret is on the returned object as
    `signing_secret`, for the one answer that shows it; only its encrypted form is stored.
    """
    if unknown := set(options or {}) - set(INTAKE_SETTINGS):
        raise ApplicationError(f"Not settable here: {', '.join(sorted(unknown))}.")
    free_text_check((options or {}).get("redact_paths"), "redact_paths")
    options = _redact_paths_checked({k: v for k, v in (options or {}).items() if v is not None})
    _limits_checked(options, options)
    free_text_check(name, "name")
    if workflow.org_id != org.pk:
        raise ApplicationError("That workflow belongs to another organization.")
    if team is not None:
        if team.org_id != org.pk:
            raise ApplicationError("That team belongs to another organization.")
        if refusal := org.teams_refusal():
            raise ApplicationError(refusal, code="forbidden")
    if callback_url:
        callback_url_checked(callback_url)
    now = timezone.now()
    secret = signing_secret_generate()
    with transaction.atomic():
        intake = Intake.objects.create(
            org=org, workflow=workflow, name=name.strip(), team=team, created_by=created_by,
            created_at=now, callback_url=callback_url, secret_rotated_at=now,
            callback_url_set_at=now if callback_url else None,
            signing_secret_encrypted=secret_encrypt(secret), **options,
        )
        audit_record(event="intake.created", org=org, actor_user=created_by, obj=intake, now=now,
                     ip=ip,
                     extra={"name": intake.name, "workflow": workflow.name,
                            "team": team.name if team else None,
                            "callback_url": url_redact(callback_url) if callback_url else None,
                            **({"settings": sorted(options)} if options else {})})
    intake.signing_secret = secret
    return intake


def callback_url_checked(url: str, *, caller: bool = False) -> str:
    """The URL policy as a 422 problem (for the header and the intake's setting): a URL that
    does not parse is refused like one the outbound policy refuses, never a 500. `caller`:
    the trigger's Auxot-Callback-Url, under the caller's policy (`caller_callback`)."""
    try:
        return url_check(url, purpose="caller_callback" if caller else "callback")
    except (RefusedDestination, ValueError) as exc:
        raise ApplicationError(f"Callback URL refused: {exc}", code="validation_failed") from None


def intake_set_active(*, intake: Intake, active: bool, actor=None,
                      ip: str | None = None) -> bool:
    """Deactivate or reactivate. Returns False when it already was in that state;
    ObjectGoneError when it was deleted since it was read."""
    now = timezone.now()
    with transaction.atomic():
        changed = Intake.objects.filter(pk=intake.pk, active=not active).update(
            active=active, deactivated_at=None if active else now
        )
        if not changed and row_gone(intake):
            raise ObjectGoneError(intake)
        if changed:
            audit_record(event="intake.reactivated" if active else "intake.deactivated",
                         org=intake.org, actor_user=actor, obj=intake, now=now, ip=ip,
                         extra={"name": intake.name})
        row_refresh(intake)
    return bool(changed)


def intake_for_key(*, intake_id: str, key: ApiKey) -> Intake:
    """The active intake this key may call, or the one 404 for every other case.

    One hand-written query (intakes/lookup.py): intake, workflow, and the key's access
    (a team key's team, or a personal key's membership of the org or the intake's team).
    """
    pk = _parse_uuid(intake_id)
    preloaded = getattr(key, "intake_checked", None)  # read with the key (authentication)
    if preloaded is not None and preloaded[0] == pk:
        intake = preloaded[1]
    else:
        intake = intake_lookup(pk=pk, key=key)
    if intake is None:
        raise _not_found()
    return intake


def intake_key_load(*, lookup_id: str, intake_id: str | None) -> ApiKey | None:
    """The key and the URL's intake in one SELECT: the key comes back with
    `intake_checked = (intake pk, the intake this key may call or None)`, which
    intake_for_key then uses without a query of its own."""
    try:
        pk = uuid.UUID(str(intake_id)) if intake_id is not None else None
    except ValueError:
        pk = None
    found = key_intake_lookup(lookup_id=lookup_id, intake_pk=pk)
    if found is None:
        return None
    key, intake = found
    if pk is not None:
        key.intake_checked = (pk, intake)
    return key


def intake_for_trigger(*, intake_id: str, key: ApiKey) -> Intake:
    """intake_for_key, then the 403 for a key whose owner may only read (an auditor)."""
    intake = intake_for_key(intake_id=intake_id, key=key)
    _require_actor(intake=intake, key=key)
    return intake


def _require_actor(*, intake: Intake, key: ApiKey) -> None:
    """Auditors read: their personal keys may poll work items, never start work.

    Checked at request time, so a key issued before its owner was demoted stops at once.
    The role normally comes with the intake lookup (no query of its own).
    """
    if key.kind == ApiKey.Kind.TEAM:
        return
    role = getattr(intake, "key_role", None)
    if role is None:
        role = Membership.objects.filter(user_id=key.user_id, org_id=intake.org_id).values_list(
            "role", flat=True).first()
    if role not in ACTOR_ROLES:
        raise PermissionDeniedError(
            "This key's owner is an auditor of the organization: auditors' keys may read "
            "work items but not trigger intakes.")


def access_refusal(*, key: ApiKey, intake: Intake) -> ApplicationError:
    """The error a request arriving now would get, for one whose access was withdrawn
    after its authentication (a key revoked, expired, its owner deactivated or demoted,
    the intake deactivated, ...): the 401 of authentication, the one 404, or the
    auditor's 403, in the order a new request meets them. The one 404 as well when
    nothing is wrong any more (the access came back meanwhile: the write was refused)."""
    try:
        apikey_recheck(key=key, now=timezone.now())
        current = intake_lookup(pk=intake.pk, key=key)
        if current is None:
            return _not_found()
        _require_actor(intake=current, key=key)
    except ApplicationError as exc:
        return exc
    return _not_found()


def intake_access_hold(*, key: ApiKey, intake: Intake) -> None:
    """The key's access to `intake` checked again as it is now, the key and intake rows
    share-locked until the commit (PostgreSQL): a revocation of them either committed
    before (this raises access_refusal) or waits for our commit."""
    if not access_granted(key=key, intake=intake, now=timezone.now(), lock=True):
        raise access_refusal(key=key, intake=intake)


@contextlib.contextmanager
def intake_access_held(*, key: ApiKey, intake: Intake):
    """A transaction for a key's action (a replay) that commits only while the key may
    still act: its access checked first, before the transaction (so a request raced by a
    revocation gets what a later one would, before any other check of the action), and
    again as the transaction's last read, so nothing that committed meanwhile is missed.
    Approval and cancel do the same through their `still_allowed`."""
    intake_access_hold(key=key, intake=intake)
    with transaction.atomic():
        yield
        intake_access_hold(key=key, intake=intake)


@dataclass(frozen=True)
class TriggerResult:
    item: WorkItem
    replayed: bool = False  # an Idempotency-Key matched an earlier accepted trigger
    rate: ratelimit.RateLimitState | None = None


def intake_trigger(*, intake: Intake, key: ApiKey, payload: Any, ip: str | None,
                   correlation_id: str = "", callback_url: str = "",
                   idempotency_key: str | None = None) -> TriggerResult:
    """Accept one trigger: the item and its idempotency record in one statement
    (intakes/accept.py), its rate counts taken just before and given back if it fails.

    The accepted trigger's audit entry is the item itself: the audit log (a database view,
    auxot.AuditLogEntry) shows it as `work_item.accepted` with the key's label and the IP.
    """
    _require_actor(intake=intake, key=key)
    if callback_url:
        callback_url_checked(callback_url, caller=True)
    claim = idempotency.idempotency_claim(key=key, header=idempotency_key, payload=payload)
    for _ in range(2):  # a second pass only when an expired record was just deleted
        now = timezone.now()
        try:
            return _trigger_once(intake=intake, key=key, payload=payload, ip=ip,
                                 correlation_id=correlation_id, callback_url=callback_url,
                                 claim=claim, now=now)
        except AccessRevoked:
            raise access_refusal(key=key, intake=intake) from None
        except IntegrityError:
            if claim is None:
                raise
        except OperationalError as exc:
            if claim is None or not idempotency.is_lock_timeout(exc):
                raise
            raise idempotency.idempotency_in_flight_error() from None
        winner = idempotency.idempotency_winner(claim=claim, intake=intake, now=now)
        if winner is not None:
            return TriggerResult(item=winner, replayed=True)
    raise idempotency.idempotency_in_flight_error()


def _trigger_once(*, intake: Intake, key: ApiKey, payload: Any, ip: str | None,
                  correlation_id: str, callback_url: str, claim, now) -> TriggerResult:
    item = work_item_new(
        workflow=intake.workflow, intake=intake, input=payload, key=key, ip=ip,
        correlation_id=correlation_id, callback_url=callback_url, now=now,
        # Listed paths never reach the database; the schema check sees the real body.
        stored_input=json_paths_redact(payload, intake.redact_paths)
        if intake.redact_paths else None,
    )
    record = None if claim is None else idempotency.idempotency_record(
        claim=claim, intake=intake, work_item_id=item.pk, now=now)
    try:
        ticket = ratelimit.ratelimit_consume(intake=intake, key=key, now=now)
    except ApplicationError:
        # Over a limit, a repeat of an accepted request still gets its first answer.
        winner = None if claim is None else idempotency.idempotency_winner(
            claim=claim, intake=intake, now=now)
        if winner is None:
            raise
        return TriggerResult(item=winner, replayed=True)
    try:
        # The write checks the key's access again, in its own statement: a revocation that
        # committed since authentication refuses it (AccessRevoked, nothing written).
        work_item_accept_write(item=item, record=record,
                               grant=access_grant(key=key, intake=intake, now=now))
    except BaseException:
        ratelimit.ratelimit_refund(ticket)
        raise
    item._state.adding, item._state.db = False, connection.alias
    return TriggerResult(item=item, rate=ticket.state if ticket else None)


def work_item_for_poll(*, intake_id: str, work_id: str, key: ApiKey) -> PollRead:
    """The poll's read: the intake this key may call and its work item `work_id` (with its
    callback delivery and replays) in one query, or the one 404 for every other case."""
    read = work_item_poll_lookup(intake_pk=_parse_uuid(intake_id), work_pk=_parse_uuid(work_id),
                                 key=key)
    if read is None:
        raise _not_found()
    return read


def work_item_poll(*, intake_id: str, work_id: str, key: ApiKey,
                   wait: float | None = None, state: str | None = None) -> tuple[PollRead, bool]:
    """The poll's read, after a long-poll's wait when `wait` is set and the item is not
    finished: until it is, or with `state` (the `Auxot-State` the caller last saw) until
    its state is another (at once when it is already). The bool: the wait was refused (this
    process has as many waiting as it allows), so the answer is the item as first read."""
    read = work_item_for_poll(intake_id=intake_id, work_id=work_id, key=key)
    if not wait or read.item.is_terminal:
        return read, False
    if state is not None:
        # The state as the answer would give it (its step progress, kept for the answer).
        read.progress = step_progress(read.item)
        if item_state(read.item, attempts=len(read.progress[1])) != state:
            return read, False
    if not work_item_wait(item=read.item, seconds=wait, owner=key.pk, org=key.org_id,
                          state=state):
        return read, True
    # As it is now, the key itself (revoked, expired, ... meanwhile: UnauthorizedError) and
    # its access checked again.
    apikey_recheck(key=key, now=timezone.now())
    return work_item_for_poll(intake_id=intake_id, work_id=work_id, key=key), False


def work_item_for_key(*, intake: Intake, work_id: str) -> WorkItem:
    pk = _parse_uuid(work_id)
    item = work_item_lookup(pk=pk, intake=intake)
    if item is None:
        raise _not_found()
    return item


INTAKE_SETTINGS = ("rate_limit_per_window", "payload_retention_days", "item_retention_days",
                   "redact_paths")
INTAKE_EDITABLE = ("name", "team", "callback_url", *INTAKE_SETTINGS)


def _redact_paths_checked(changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` with redact_paths (if given) checked and None as []; else a 422 problem."""
    if "redact_paths" not in changes:
        return changes
    changes = {**changes, "redact_paths": changes["redact_paths"] or []}
    try:
        json_paths_check(changes["redact_paths"])
    except ValueError as exc:
        raise ApplicationError(f"redact_paths: {exc}", code="validation_failed") from None
    return changes


def _limits_checked(changes: dict[str, Any], names) -> None:
    """The model's own limits (retention days at most a century, ...) on `names` of
    `changes`; a 422 problem naming the field otherwise."""
    for name in names:
        field = Intake._meta.get_field(name)
        if not field.is_relation and changes[name] is not None:
            try:
                field.run_validators(changes[name])
            except ValidationError as exc:
                raise ApplicationError(f"{name}: {' '.join(exc.messages)}",
                                       code="validation_failed") from None


def _audited_value(field: str, value: Any) -> Any:
    """An intake setting as its audit row keeps it: a team by name, a URL redacted (its path
    and query may hold the receiver's token)."""
    if field == "callback_url":
        return url_redact(value) if value else ""
    if isinstance(value, Team):
        return str(value)
    return value


def intake_update(*, intake: Intake, changes: dict[str, Any], actor=None,
                  ip: str | None = None) -> list[str]:
    """Edit an intake's settings (not `active`: see intake_set_active). Audited as
    intake.changed with the changed field names and each one's [old, new] (URLs redacted).
    Returns the names."""
    unknown = set(changes) - set(INTAKE_EDITABLE)
    if unknown:
        raise ApplicationError(f"Not editable here: {', '.join(sorted(unknown))}.")
    team = changes.get("team", intake.team)
    if "team" in changes and team is not None:
        if team.org_id != intake.org_id:
            raise ApplicationError("That team belongs to another organization.")
        if refusal := intake.org.teams_refusal():
            raise ApplicationError(refusal, code="forbidden")
    for field in ("name", "redact_paths"):
        if field in changes:
            free_text_check(changes[field], field)
    if changes.get("callback_url"):
        callback_url_checked(changes["callback_url"])
    changes = _redact_paths_checked(changes)
    changed = [f for f in INTAKE_EDITABLE if f in changes and getattr(intake, f) != changes[f]]
    if not changed:
        return []
    _limits_checked(changes, changed)
    old_url = intake.callback_url
    saved = list(changed)
    if "callback_url" in changed and not old_url:  # from now on, not for work done before
        intake.callback_url_set_at = timezone.now()
        saved.append("callback_url_set_at")
    was = {field: _audited_value(field, getattr(intake, field)) for field in changed}
    with transaction.atomic():
        if not Intake.objects.select_for_update().filter(pk=intake.pk).exists():
            raise ObjectGoneError(intake)  # deleted since it was read: saved nothing
        for field in changed:
            setattr(intake, field, changes[field])
        intake.save(update_fields=saved)
        extra = {"fields": changed, "name": intake.name,
                 "changes": {field: [was[field], _audited_value(field, changes[field])]
                             for field in changed}}
        if "callback_url" in changed:
            extra["deliveries_moved"] = callback_deliveries_retarget(intake=intake,
                                                                     old_url=old_url)
        audit_record(event="intake.changed", org=intake.org, actor_user=actor, obj=intake, ip=ip,
                     extra=extra)
    return changed


def intake_deletion_record(*, intake: Intake, origin) -> None:
    """Audit an intake deleted (a superuser's delete page, or its organization deleted): the
    admins' way out is Deactivate, and an intake with work items cannot be deleted at all."""
    audit_deletion(
        event="intake.deleted", obj=intake, org=intake.org, origin=origin,
        extra={"name": intake.name, "workflow_id": str(intake.workflow_id),
               "was": "active" if intake.active else "inactive"})
