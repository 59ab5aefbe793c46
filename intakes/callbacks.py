"""Callback services: signing secrets, deliveries, attempts, the sender, endpoint breakers.

A delivery is a row with a schedule (`next_attempt_at`) and a lease, like a work item: the
dispatcher (intakes/dispatcher.py; or, with AUXOT_CALLBACK_DELIVERY=tasks, a django-q2 task
the tick enqueues) claims a due one with a guarded UPDATE, writes the attempt row before
sending, and records the outcome under its lease token. Nothing is held in memory, so
deliveries survive restarts, and two dispatchers never send the same attempt. Each outcome
also feeds the endpoint's circuit breaker (CallbackEndpoint), shared through the database.
"""

import functools
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from auxot import rawsql
from auxot.broker import task_enqueue
from auxot.errors import ObjectGoneError, row_gone, row_refresh
from auxot.http import retry_after_seconds
from auxot.logs import log_context
from auxot.models import Organization
from auxot.outbound import (
    MAX_URL,
    RefusedDestination,
    host_key,
    outbound_post,
    parts_redacted,
    url_hidden_parts,
    url_redact,
)
from auxot.services import audit_record
from auxot.storable import text_decode
from intakes.metrics import callback_attempted
from intakes.models import CallbackAttempt, CallbackDelivery, CallbackEndpoint, Intake
from intakes.presenters import callback_url_for, render_json, work_item_poll_view
from intakes.secrets import secret_decrypt, secret_encrypt, signing_secret_generate
from workflows.lookup import step_progress_many
from workflows.models import Workflow, WorkItem

logger = logging.getLogger(__name__)
State = CallbackDelivery.State
TASK = "intakes.tasks.callback_delivery_run"
CHANNEL = "auxot_callbacks"  # PostgreSQL NOTIFY channel the dispatcher LISTENs on
DEFAULT_PORTS = {"http": 80, "https": 443}
LEASE_GRACE_SECONDS = 30
SWEEP_GRACE_SECONDS = 10  # the finished signal normally creates the delivery within ms
RESPONSE_KEEP_BYTES = 2048
ERROR_KEEP_CHARS = 300  # of an attempt's error text
USER_AGENT = "Auxot-Webhooks/1 (+https://www.standardwebhooks.com/)"


# --- Signing secrets ------------------------------------------------------------------

def intake_signing_secret_rotate(*, intake: Intake, actor=None, now: datetime | None = None,
                                 ip: str | None = None) -> str:
    """Make a new signing secret and return it (the only time it is shown).

    The old one keeps signing alongside it for AUXOT_CALLBACK_SECRET_ROTATION_HOURS, so
    receivers can switch without a gap. The first secret of an intake has no window. A
    rotation inside an open window keeps the earlier old ones too (up to
    PREVIOUS_SECRETS_KEPT), all until the new window ends: the secret is shown once, so a
    second rotation (a lost copy, two admins) must not cut off receivers that still hold
    the one before.
    """
    now = now or timezone.now()
    secret = signing_secret_generate()
    window = timedelta(hours=settings.AUXOT_CALLBACK_SECRET_ROTATION_HOURS)
    with transaction.atomic():
        locked = Intake.objects.select_for_update().filter(pk=intake.pk).first()
        if locked is None:  # deleted since it was read: no secret made, nothing audited
            raise ObjectGoneError(intake)
        first = not locked.signing_secret_encrypted
        still_open = _previous_tokens(locked, now)
        kept = [locked.signing_secret_encrypted, *still_open][:PREVIOUS_SECRETS_KEPT]
        locked.previous_signing_secret_encrypted = "" if first else "\n".join(kept)
        locked.previous_secret_expires_at = None if first else now + window
        locked.signing_secret_encrypted = secret_encrypt(secret)
        locked.secret_rotated_at = now
        locked.save(update_fields=["previous_signing_secret_encrypted", "signing_secret_encrypted",
                                   "previous_secret_expires_at", "secret_rotated_at"])
        audit_record(
            event="intake.signing_secret_created" if first else "intake.signing_secret_rotated",
            org=locked.org, actor_user=actor, obj=locked, now=now, ip=ip,
            extra={"name": locked.name, "previous_valid_until":
                   locked.previous_secret_expires_at.isoformat()
                   if locked.previous_secret_expires_at else None})
    for name in ("previous_signing_secret_encrypted", "signing_secret_encrypted",
                 "previous_secret_expires_at", "secret_rotated_at"):
        setattr(intake, name, getattr(locked, name))
    return secret


# Old signing secrets that sign beside the current one during a rotation's window, at most.
PREVIOUS_SECRETS_KEPT = 3


def _previous_tokens(intake: Intake, now: datetime) -> list[str]:
    """The old secrets (encrypted, newest first) whose window is still open. Stored one per
    line in `previous_signing_secret_encrypted` (a Fernet token has no newline)."""
    if not (intake.previous_signing_secret_encrypted and intake.previous_secret_expires_at
            and intake.previous_secret_expires_at > now):
        return []
    return intake.previous_signing_secret_encrypted.split("\n")


def intake_signing_secrets(*, intake: Intake, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, plus the old during rotation."""
    if not intake.signing_secret_encrypted:
        raise ValueError("the intake has no signing secret: rotate it in the admin")
    return [secret_decrypt(token) for token in
            [intake.signing_secret_encrypted, *_previous_tokens(intake, now)]]


def intake_callback_disable(*, intake: Intake, reason: str, now: datetime,
                            url: str = "") -> bool:
    """The receiver at the intake's callback URL asked to stop (410 Gone). Deliveries of the
    intake to that URL that wait for a retry stop too: the receiver said it for all of
    them, and the poll would otherwise show them pending while they are posted to it."""
    with transaction.atomic():
        current = Intake.objects.filter(pk=intake.pk, callback_disabled_at__isnull=True)
        if url:  # an attempt that began before an admin replaced the URL says nothing of it
            current = current.filter(callback_url=url)
        changed = current.update(callback_disabled_at=now, callback_disabled_reason=reason[:300])
        if url:
            CallbackDelivery.objects.filter(
                intake_id=intake.pk, uses_intake_default=True, url=url, state=State.PENDING,
            ).update(state=State.DISABLED, next_attempt_at=None,
                     last_error="the intake's callback is disabled")
        if changed:
            audit_record(event="intake.callback_disabled", org=intake.org, obj=intake, now=now,
                         actor_label="callback receiver",
                         extra={"name": intake.name, "reason": reason[:300]})
    return bool(changed)


def callback_deliveries_retarget(*, intake: Intake, old_url: str) -> int:
    """An admin changed the intake's callback URL (in intake_update's transaction): the
    deliveries still going to the old one go to the new one from their next attempt (the
    receiver moved, or the URL was wrong; retries to it for a day help nobody). A caller's
    own URL (Auxot-Callback-Url) is never touched. With the URL removed, the ones waiting
    for a retry stop (`disabled`). One being sent at this moment finishes that attempt where
    it began. Returns how many deliveries were changed."""
    if not old_url:
        return 0
    pending = CallbackDelivery.objects.filter(intake_id=intake.pk, uses_intake_default=True,
                                              url=old_url)
    if not intake.callback_url:
        return pending.filter(state=State.PENDING).update(
            state=State.DISABLED, next_attempt_at=None,
            last_error="the intake's callback URL was removed")
    return pending.filter(state__in=[State.PENDING, State.DELIVERING]).update(
        url=intake.callback_url, endpoint=endpoint_key(intake.callback_url, intake.org_id))


def intake_callback_enable(*, intake: Intake, actor=None, ip: str | None = None) -> bool:
    now = timezone.now()
    with transaction.atomic():
        changed = Intake.objects.filter(pk=intake.pk, callback_disabled_at__isnull=False).update(
            callback_disabled_at=None, callback_disabled_reason="")
        if not changed and row_gone(intake):
            raise ObjectGoneError(intake)
        if changed:
            audit_record(event="intake.callback_enabled", org=intake.org, actor_user=actor,
                         obj=intake, now=now, ip=ip, extra={"name": intake.name})
        row_refresh(intake)
    return bool(changed)


# --- Deliveries: create, wake, claim ------------------------------------------------------

def callback_delivery_enqueue(*, delivery_id) -> None:
    """Queue a task for this delivery. Never raises: the tick re-enqueues a lost one."""
    task_enqueue(task=TASK, arg=str(delivery_id), name=f"cb-{delivery_id}")


def delivery_by_tasks() -> bool:
    return settings.AUXOT_CALLBACK_DELIVERY == "tasks"


def callback_delivery_announce(*, delivery_id) -> None:
    """Tell whoever sends that a delivery came due. Call it inside the transaction that made
    it due: a NOTIFY on PostgreSQL (sent at commit, dropped on rollback); with tasks, a queue
    message after commit; on SQLite the dispatcher's short poll finds it."""
    if delivery_by_tasks():
        transaction.on_commit(lambda: callback_delivery_enqueue(delivery_id=delivery_id))
    elif connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])


def endpoint_key(url: str, org_id=None, *, caller: bool = False) -> str:
    """The unit of the concurrency cap and the breaker: scheme://host:port of a URL, and
    the organization whose deliveries go there. Per organization: a tenant whose URLs fail
    on a host that others use too (a chat service's webhooks, say) opens its own breaker and
    fills its own share, never theirs. `caller`: URLs callers sent (Auxot-Callback-Url)
    have their own, so a caller's URLs that fail on the host of the intake's own receiver
    (a path a proxy answers 502) cannot pause the intake's callbacks."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return ""
    host = host_key(parts.hostname or "")  # every spelling of one host: one key
    if ":" in host:
        host = f"[{host}]"
    mark = CALLER_MARK if caller else ""
    base = f"{parts.scheme.lower()}://{host}:{port}"[:280 - len(mark)] + mark
    return base if org_id is None else f"{base}{ORG_MARK}{org_id})"


CALLER_MARK = " (callers' URLs)"  # after the host of an endpoint key for callers' URLs


ORG_MARK = " (org "  # between an endpoint key's URL part and its organization


def endpoint_label(key: str) -> str:
    """The scheme://host:port part of an endpoint key, for display."""
    return key.partition(ORG_MARK)[0]


def endpoint_org(key: str) -> str:
    """The organization part of an endpoint key ("" for a key made before it had one)."""
    return key.partition(ORG_MARK)[2].rstrip(")")


def endpoint_shared(key: str) -> bool:
    """A key made before keys were per organization (scheme://host:port alone, or none before
    0007): one breaker and one cap for every organization's deliveries of then to that host.
    Deliveries keep it until they finish ("Redeliver now" gives one its own)."""
    return not endpoint_org(key)


def _calls_back(work_item: WorkItem, intake: Intake | None) -> bool:
    """Whether a finished item gets a delivery: it has an intake and a URL to call."""
    return (intake is not None and work_item.is_terminal
            and bool(callback_url_for(work_item, intake)))


def _delivery_fields(work_item: WorkItem, intake: Intake | None, now: datetime) -> dict | None:
    """A new delivery's fields for a finished item, or None when it has no callback."""
    if not _calls_back(work_item, intake):
        return None
    url = callback_url_for(work_item, intake)
    override = bool(work_item.callback_url)
    disabled = intake.callback_disabled and not override
    return {"intake": intake, "webhook_id": f"msg_{uuid.uuid4().hex}", "url": url,
            "endpoint": endpoint_key(url, intake.org_id, caller=override),
            "uses_intake_default": not override, "created_at": now,
            "state": State.DISABLED if disabled else State.PENDING,
            "last_error": "the intake's callback is disabled" if disabled else "",
            "next_attempt_at": None if disabled else now,
            "enqueued_at": None if disabled else now}


def _intakes_held(ids: set) -> dict:
    """The intakes as they are now, by id, held FOR SHARE until the caller's transaction
    commits: an admin's change of the callback URL (or a 410's disable), which moves or
    stops the deliveries written so far, waits for the ones written with it here, or is
    read by them. A delivery written with a URL read before such a change went to the URL
    the admin had moved away from. Shared: deliveries of one intake are written at once."""
    rows = Intake.objects.filter(pk__in=ids)
    if connection.vendor != "postgresql":
        return rows.in_bulk()
    sql, params = rows.query.sql_with_params()
    return {intake.pk: intake for intake in Intake.objects.raw(f"{sql} FOR SHARE", params)}


def callback_delivery_create(*, work_item: WorkItem,
                             now: datetime | None = None) -> CallbackDelivery | None:
    """The delivery of a finished item's callback, if it has a URL. Safe to call twice."""
    now = now or timezone.now()
    if not _calls_back(work_item, work_item.intake):
        return None  # no callback (an intake's URL added this instant is for later work)
    with transaction.atomic():
        intake = _intakes_held({work_item.intake_id}).get(work_item.intake_id)
        fields = _delivery_fields(work_item, intake, now)
        if fields is None:
            return None
        delivery, created = CallbackDelivery.objects.get_or_create(
            work_item=work_item, defaults=fields)
        if created and delivery.state == State.PENDING:
            callback_delivery_announce(delivery_id=delivery.pk)
    return delivery


def callback_deliveries_create(*, work_items: list[WorkItem],
                               now: datetime | None = None) -> list[WorkItem]:
    """The deliveries of a batch of finished items in one INSERT (one wake-up for all);
    an item that has one already keeps it. Returns the items handled; with
    AUXOT_CALLBACK_DELIVERY=tasks none is (each needs its own task: see
    `callback_delivery_create`)."""
    if delivery_by_tasks() or not work_items:
        return []
    now = now or timezone.now()
    with transaction.atomic():
        intakes = Intake.objects.in_bulk({i.intake_id for i in work_items if i.intake_id})
        calling = {item.intake_id for item in work_items
                   if _calls_back(item, intakes.get(item.intake_id))}
        # Held only when some item calls back: a batch without callbacks (the common case)
        # takes no row lock on its intakes (as in `callback_delivery_create`, an intake's URL
        # added this instant is for later work).
        intakes = _intakes_held(calling) if calling else {}
        rows = []
        for item in work_items:
            fields = _delivery_fields(item, intakes.get(item.intake_id), now)
            if fields is not None:
                rows.append(CallbackDelivery(work_item=item, **fields))
        if rows:
            CallbackDelivery.objects.bulk_create(rows, ignore_conflicts=True)
        if any(row.state == State.PENDING for row in rows):
            callback_delivery_announce(delivery_id=None)
    return work_items


def _wakeable(now: datetime):
    requeue_before = now - timedelta(seconds=settings.AUXOT_REQUEUE_AFTER_SECONDS)
    return CallbackDelivery.objects.filter(next_attempt_at__lte=now).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=F("next_attempt_at"))
        | Q(enqueued_at__lt=requeue_before))


def callback_deliveries_wake(*, now: datetime | None = None, limit: int = 200) -> int:
    """Enqueue deliveries that came due: retries, expired leases, lost queue messages."""
    now = now or timezone.now()
    ids = list(_wakeable(now).order_by("next_attempt_at").values_list("pk", flat=True)[:limit])
    if ids:
        _wakeable(now).filter(pk__in=ids).update(enqueued_at=now)
        for delivery_id in ids:
            callback_delivery_enqueue(delivery_id=delivery_id)
    return len(ids)


def callback_deliveries_sweep(*, now: datetime | None = None, limit: int = 100) -> int:
    """Create deliveries a crash skipped (killed between the item's commit and its signal)."""
    now = now or timezone.now()
    missing = WorkItem.objects.filter(
        created_at__gte=now - timedelta(days=1), status__in=[WorkItem.Status.COMPLETED,
                                                             WorkItem.Status.FAILED],
        finished_at__lte=now - timedelta(seconds=SWEEP_GRACE_SECONDS), intake__isnull=False,
        callback_delivery__isnull=True,
    ).filter(Q(callback_url__gt="") | (Q(intake__callback_url__gt="") & (
        # The intake's URL only for work that finished since it has one (not retroactively).
        Q(intake__callback_url_set_at__isnull=True)
        | Q(finished_at__gte=F("intake__callback_url_set_at"))))).select_related("intake")
    created = 0
    for item in missing[:limit]:
        created += callback_delivery_create(work_item=item, now=now) is not None
    return created


def _attempts_written():
    """The delivery's attempts as its attempt rows number them (an UPDATE's expression)."""
    written = CallbackAttempt.objects.filter(delivery=OuterRef("pk")).order_by().values(
        "delivery").annotate(last=Max("number")).values("last")
    return Coalesce(Subquery(written), 0)


def _attempts_next():
    """A claim's attempt number: one past the attempt rows written, not past the count of
    claims. A claim whose lease was lost before its row was written (its sender stalled,
    another claimed the delivery) leaves no gap in the numbers and uses up no retry."""
    return _attempts_written() + 1


@functools.cache
def _attempts_next_sql() -> str:
    """`_attempts_next` in the batch claim's raw UPDATE of the deliveries' table."""
    attempts = rawsql.table(CallbackAttempt)
    delivery = rawsql.quote(CallbackAttempt._meta.get_field("delivery").column)
    number = rawsql.quote(CallbackAttempt._meta.get_field("number").column)
    pk = rawsql.quote(CallbackDelivery._meta.pk.column)
    return (f"(SELECT COALESCE(MAX(a.{number}), 0) + 1 FROM {attempts} a "  # noqa: S608
            f"WHERE a.{delivery} = {rawsql.table(CallbackDelivery)}.{pk})")


def lease_seconds() -> float:
    return settings.AUXOT_CALLBACK_TIMEOUT_SECONDS + LEASE_GRACE_SECONDS


def callback_deliveries_claim(*, ids: list, now: datetime) -> list[tuple[CallbackDelivery, str]]:
    """Take the due ones of these deliveries under a new lease each (one more attempt), in one
    UPDATE: those another dispatcher took meanwhile are left out. The lease token is shared
    by the batch; every later step guards on (delivery, token)."""
    if not ids:
        return []
    token = uuid.uuid4().hex
    lease_end = now + timedelta(seconds=lease_seconds())
    meta = CallbackDelivery._meta
    pk, due = meta.pk, meta.get_field("next_attempt_at")
    sql = (f"UPDATE {rawsql.table(CallbackDelivery)} SET state = %s, lease_token = %s, "  # noqa: S608 (names from _meta)
           f"next_attempt_at = %s, attempts = {_attempts_next_sql()} "
           f"WHERE id IN ({', '.join(['%s'] * len(ids))}) AND next_attempt_at <= %s "
           "AND state IN (%s, %s)")
    with connection.cursor() as cursor:
        cursor.execute(sql, [State.DELIVERING, token, due.get_db_prep_save(lease_end, connection),
                             *(pk.get_db_prep_save(i, connection) for i in ids),
                             due.get_db_prep_save(now, connection), State.PENDING,
                             State.DELIVERING])
        if not cursor.rowcount:
            return []
    return [(delivery, token) for delivery in _claimed(token)]


@functools.cache
def _claimed_plan(vendor: str) -> tuple[str, list]:
    """The deliveries under a lease token, with their intake, org, work item and workflow
    (what the attempt needs), in one SELECT built from the models' own columns."""
    models = [(CallbackDelivery, "d"), (Intake, "i"), (Organization, "o"), (WorkItem, "w"),
              (Workflow, "f")]
    parts = [rawsql.columns(model, alias) for model, alias in models]
    sql = (f"SELECT {', '.join(cols for _fields, cols in parts)} "  # noqa: S608 (names from _meta)
           f"FROM {rawsql.table(CallbackDelivery)} d "
           f"JOIN {rawsql.table(Intake)} i ON i.id = d.intake_id "
           f"JOIN {rawsql.table(Organization)} o ON o.id = i.org_id "
           f"JOIN {rawsql.table(WorkItem)} w ON w.id = d.work_item_id "
           f"JOIN {rawsql.table(Workflow)} f ON f.id = w.workflow_id "
           "WHERE d.lease_token = %s")
    return sql, [(model, fields) for (model, _alias), (fields, _cols) in zip(
        models, parts, strict=True)]


def _claimed(token: str) -> list[CallbackDelivery]:
    sql, layout = _claimed_plan(connection.vendor)
    spans, start = [], 0
    for model, fields in layout:
        spans.append((model, fields, start, start + len(fields)))
        start += len(fields)
    shared: dict = {}  # (model, pk) -> instance: a batch's deliveries share a few intakes

    def one(index: int, row):
        model, fields, begin, end = spans[index]
        if model in (Intake, Organization, Workflow):
            key = (model, row[begin])
            if key not in shared:
                shared[key] = rawsql.instance(model, fields, row[begin:end])
            return shared[key]
        return rawsql.instance(model, fields, row[begin:end])

    deliveries = []
    with connection.cursor() as cursor:
        cursor.execute(sql, [token])
        for row in cursor.fetchall():
            delivery, intake, org, item, workflow = (one(i, row) for i in range(len(spans)))
            intake.org, item.workflow = org, workflow
            delivery.intake, delivery.work_item = intake, item
            deliveries.append(delivery)
    return deliveries


def _claim(delivery_id, now: datetime) -> tuple[CallbackDelivery, str] | None:
    token = uuid.uuid4().hex
    lease_end = now + timedelta(seconds=lease_seconds())
    changed = CallbackDelivery.objects.filter(
        pk=delivery_id, next_attempt_at__lte=now, state__in=[State.PENDING, State.DELIVERING],
    ).update(state=State.DELIVERING, lease_token=token, next_attempt_at=lease_end,
             attempts=_attempts_next())
    if changed != 1:
        return None
    delivery = CallbackDelivery.objects.select_related(
        "intake__org", "work_item__workflow").get(pk=delivery_id)
    return delivery, token


def redeliver_refusal(delivery: CallbackDelivery) -> str:
    """Why "Redeliver now" cannot resend `delivery` (an empty string when it can, unless an
    attempt is in flight): one that went to its intake's URL has nowhere to go once that
    URL was removed."""
    if delivery.uses_intake_default and not delivery.intake.callback_url:
        return "its intake has no callback URL now"
    return ""


def callback_delivery_redeliver(*, delivery: CallbackDelivery, actor=None,
                                ip: str | None = None) -> bool:
    """"Redeliver now": a new attempt at once (same webhook-id), then the schedule anew.

    To where the intake's callbacks go NOW when the delivery used the intake's URL (the
    receiver moved, or the old one was retired: a resend to it would reach a host the admin
    moved away from, as waiting deliveries are moved by `callback_deliveries_retarget`); a
    caller's own URL (Auxot-Callback-Url) stays. False, changing nothing, when the intake's
    URL was removed since (see `redeliver_refusal`), an attempt is in flight, or retention
    deleted the delivery with its item since it was read.

    On its organization's own endpoint key: one made before keys were per organization
    (`endpoint_shared`) is every tenant's breaker and cap for that host, and a delivery
    brought back on it would count its failures against the other organizations'
    deliveries there (and, without an organization, escape its own organization's cap)."""
    now = timezone.now()
    with transaction.atomic():
        # The intake's URL as it is now, held until this commits: an admin who changes it
        # meanwhile (moving the waiting deliveries) is not undone with the URL read before.
        current = (Intake.objects.select_for_update(no_key=True).filter(pk=delivery.intake_id)
                   .values_list("callback_url", flat=True).first())
        if current is None:
            return False
        delivery.intake.callback_url = current
        if redeliver_refusal(delivery):
            return False
        url = delivery.intake.callback_url if delivery.uses_intake_default else delivery.url
        endpoint = endpoint_key(url, delivery.intake.org_id,
                                caller=not delivery.uses_intake_default)
        extra = {"webhook_id": delivery.webhook_id, "work_item": str(delivery.work_item_id)}
        if url != delivery.url:
            extra["url"] = [url_redact(delivery.url), url_redact(url)]
        changed = CallbackDelivery.objects.filter(pk=delivery.pk).exclude(
            state=State.DELIVERING).update(state=State.PENDING, next_attempt_at=now,
                                           schedule_base=_attempts_next() - 1,
                                           enqueued_at=now,
                                           url=url, endpoint=endpoint)
        if changed:
            audit_record(event="callback.redelivered", org=delivery.intake.org, actor_user=actor,
                         obj=delivery, now=now, ip=ip, extra=extra)
            callback_delivery_announce(delivery_id=delivery.pk)
            # In the transaction that holds the row: after the commit, retention may
            # already have deleted it with its item. (Unchanged may mean gone already.)
            delivery.refresh_from_db()
    return bool(changed)


def endpoint_circuit_close(*, key: str, org: Organization, actor=None,
                           ip: str | None = None) -> bool:
    """An admin says the endpoint is back: its open breaker closes at once, so the
    deliveries waiting for it are claimed on the dispatcher's next look instead of after the
    pause and a probe. The failure count stays: if the receiver is still down, its next
    failure opens the breaker again (nothing is burnt beyond one attempt per claimed
    delivery). Only `org`'s own endpoint keys; audited. False when it was not open."""
    if not key or endpoint_org(key) != str(org.pk):
        return False
    now = timezone.now()
    with transaction.atomic():
        endpoint = CallbackEndpoint.objects.select_for_update().filter(
            key=key, open_until__isnull=False).first()
        if endpoint is None:
            return False
        CallbackEndpoint.objects.filter(pk=key).update(open_until=None, probe_until=None,
                                                       updated_at=now)
        audit_record(event="callback.endpoint_closed", org=org, actor_user=actor, obj=endpoint,
                     now=now, ip=ip, extra={
                         "endpoint": endpoint_label(key),
                         "failing_since": endpoint.failing_since.isoformat()
                         if endpoint.failing_since else None,
                         "consecutive_failures": endpoint.consecutive_failures})
        if not delivery_by_tasks():  # with tasks, the tick enqueues what came due
            callback_delivery_announce(delivery_id=None)
    return True


# --- Sending ------------------------------------------------------------------------------

@dataclass
class SendResult:
    status: int | None = None
    latency_ms: int | None = None
    body: str = ""
    headers: dict = field(default_factory=dict)
    error: str = ""
    # What went wrong, as a word (no text of the receiver's or a library's): `refused`,
    # `timeout`, `connection_failed`, `request_failed`, `no_callback_url`, `no_signing_secret`.
    error_kind: str = ""
    refused: bool = False  # the policy refused the URL: nothing sent, no retry
    unsent: bool = False  # nothing sent this time (no signing secret), retried

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def reached_host(self) -> bool:
        """Whether a request went out: only then does the outcome say anything of the
        endpoint, for its breaker."""
        return not (self.refused or self.unsent)


def signed_headers(*, secrets: list[str], webhook_id: str, body: bytes,
                   now: datetime) -> dict[str, str]:
    """Standard Webhooks headers; one `v1,` signature per active secret, space-separated."""
    text = body.decode("utf-8")
    signatures = [Webhook(secret).sign(webhook_id, now, text) for secret in secrets]
    return {"content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(signatures)}


def callback_post(*, url: str, body: bytes, headers: dict[str, str],
                  caller: bool = False) -> SendResult:
    """POST once under the outbound policy (`caller`: a URL the caller sent, under theirs);
    never follows redirects; never raises."""
    started = time.monotonic()
    timeout = settings.AUXOT_CALLBACK_TIMEOUT_SECONDS
    try:
        answer = outbound_post(url, purpose="caller_callback" if caller else "callback",
                               timeout=timeout, body=body,
                               headers=headers, max_bytes=RESPONSE_KEEP_BYTES + MAX_URL)
    except RefusedDestination as exc:
        return SendResult(error=f"refused: {exc}", error_kind="refused", refused=True)
    except requests.Timeout:
        error, kind = f"timed out after {timeout:g} s", "timeout"
    except requests.RequestException as exc:
        if isinstance(exc, requests.ConnectionError):
            error, kind = f"connection failed: {_short(exc)}", "connection_failed"
        else:
            error, kind = f"request failed: {_short(exc)}", "request_failed"
    else:
        return SendResult(status=answer.status, body=_answer_kept(answer.content, url),
                          headers=answer.headers,
                          latency_ms=int((time.monotonic() - started) * 1000))
    return SendResult(error=_scrub(error, url)[:ERROR_KEEP_CHARS], error_kind=kind,
                      latency_ms=int((time.monotonic() - started) * 1000))


def _scrub(error: str, url: str) -> str:
    # Library messages may quote the URL; its query or path often carries the receiver's token.
    return parts_redacted(error, url_hidden_parts(url))


def _answer_kept(content: bytes, url: str) -> str:
    """The answer's first RESPONSE_KEEP_BYTES as storable text (PostgreSQL text cannot hold
    NUL, for one: a receiver's answer must never make its attempt impossible to record),
    without the URL's hidden parts (an error page often quotes the URL it was asked for).
    Scrubbed before it is cut, from MAX_URL bytes more: a token across the cut is whole."""
    if not content:
        return ""
    text = _scrub(text_decode(content), url)
    return text.encode()[:RESPONSE_KEEP_BYTES].decode("utf-8", "ignore")


def _short(exc: Exception) -> str:
    # requests nests the root cause; its text is enough and never contains our secrets.
    root = exc
    while root.__cause__ is not None or (root.args and isinstance(root.args[0], Exception)):
        root = root.__cause__ or root.args[0]
    return f"{type(root).__name__}: {root}"[:ERROR_KEEP_CHARS + MAX_URL]  # cut after _scrub


def _next_attempt(delivery: CallbackDelivery, result: SendResult,
                  now: datetime) -> datetime | None:
    schedule = settings.AUXOT_CALLBACK_RETRY_SCHEDULE
    # Attempts made in this round. Both numbers follow the attempt rows written; never
    # below 0 for a delivery whose count ran ahead of its rows before they did.
    index = max(delivery.attempts - delivery.schedule_base, 0)
    if index >= len(schedule):
        return None
    delay = schedule[index]
    delay += delay * random.uniform(-1, 1) * settings.AUXOT_CALLBACK_JITTER
    hinted = retry_after_seconds(result.headers.get("retry-after"), now=now,
                                 cap=settings.AUXOT_CALLBACK_RETRY_AFTER_MAX_SECONDS)
    if hinted is not None and (result.status == 429 or (result.status or 0) >= 500):
        delay = max(delay, hinted)
    return now + timedelta(seconds=delay)


def _outcome(delivery: CallbackDelivery, result: SendResult,
             now: datetime) -> tuple[str, datetime | None, str]:
    """(state, next_attempt_at, why) after one attempt."""
    if result.ok:
        return State.DELIVERED, None, ""
    if result.refused:
        return State.FAILED, None, result.error
    if result.status == 410:
        # The intake's callback stops only when its current URL said it: a retry still
        # going to a URL the admin has since replaced says nothing of the new one.
        current = delivery.uses_intake_default and delivery.url == delivery.intake.callback_url
        return (State.DISABLED if current else State.FAILED), None, \
            "the receiver answered 410 Gone"
    if _asked_to_stop(result):
        return State.FAILED, None, "the receiver asked to stop (webhook-delivery: abort-message)"
    why = result.error or f"HTTP {result.status}" + (
        " (redirects are not followed)" if 300 <= (result.status or 0) < 400 else "")
    retry_at = _next_attempt(delivery, result, now)
    if retry_at is None:
        return State.FAILED, None, f"{why}; no attempts left"
    return State.PENDING, retry_at, why


_ATTEMPT_RESULT_FIELDS = ["finished_at", "status_code", "latency_ms", "response_body", "error"]


def _attempt_result(attempt: CallbackAttempt, result: SendResult, now: datetime, *,
                    item: WorkItem) -> None:
    attempt.finished_at = now
    attempt.status_code = result.status
    attempt.latency_ms = result.latency_ms
    # An item retention redacted (read when the attempt was claimed: a redaction waits for
    # no attempt in flight, see intakes/retention.py) keeps no answer: it may quote payload.
    attempt.response_body = "" if item.redacted_at is not None else result.body
    attempt.error = result.error[:500]


def _delivery_result(delivery: CallbackDelivery, token: str, result: SendResult,
                     now: datetime) -> tuple[str, bool, str]:
    """The delivery's new state under its lease: (state, changed, why). In a transaction."""
    state, next_at, why = _outcome(delivery, result, now)
    changed = CallbackDelivery.objects.filter(pk=delivery.pk, lease_token=token).update(
        state=state, next_attempt_at=next_at, lease_token="", last_status=result.status,
        last_error=why[:500], delivered_at=now if state == State.DELIVERED else None)
    if changed and state == State.DISABLED:
        intake_callback_disable(intake=delivery.intake, now=now, url=delivery.url,
                                reason=f"410 Gone from {url_redact(delivery.url)}")
    return state, bool(changed), why


def _asked_to_stop(result: SendResult) -> bool:
    """The receiver answered `webhook-delivery: abort-message` (an HTTP answer, not an error
    text: a receiver can put any words in a malformed status line)."""
    return result.status is not None and str(
        result.headers.get("webhook-delivery", "")).strip().lower() == "abort-message"


# Answers that say the receiver itself is in trouble (besides no answer at all).
_ENDPOINT_TROUBLE = frozenset({408, 429})


def _answered(result: SendResult) -> bool:
    """The endpoint is up, for its breaker: it answered, and not with trouble of its own
    (5xx, 408, 429). Any other answer (2xx, 410, a 404 for a wrong path, a 401 for a stale
    token in one URL, abort-message) is about that URL: counting it would let one URL (one
    team's intake, one caller's Auxot-Callback-Url) pause every delivery of the organization
    to that host. From the answer itself, never from the error's text, which may quote what
    the receiver sent."""
    status = result.status
    if status is None:
        return False
    return _asked_to_stop(result) or not (status >= 500 or status in _ENDPOINT_TROUBLE)


def _attempt_record(delivery: CallbackDelivery, token: str, attempt: CallbackAttempt,
                    result: SendResult) -> str:
    now = timezone.now()
    with transaction.atomic():
        _attempt_result(attempt, result, now, item=delivery.work_item)
        state, changed, why = _delivery_result(delivery, token, result, now)
        # Only under the lease: a holder whose lease was lost (and claimed again) records
        # nothing; its open row is the newer holder's to close ("interrupted"). No row:
        # retention deleted the item, its delivery and this attempt while the POST was in
        # flight (nothing is left to record).
        if changed:
            CallbackAttempt.objects.filter(pk=attempt.pk).update(
                **{name: getattr(attempt, name) for name in _ATTEMPT_RESULT_FIELDS})
    if changed and result.reached_host:
        endpoint_outcome(key=delivery.endpoint, ok=_answered(result), error=why, now=now)
    return state


def callback_delivery_process(*, delivery_id) -> str | None:
    """The task body: make one attempt if the delivery is due. Safe to run twice."""
    now = timezone.now()
    claimed = _claim(delivery_id, now)
    if claimed is None:
        return None
    delivery, token = claimed
    return callback_delivery_send(delivery=delivery, token=token, now=now)


def callback_delivery_send(*, delivery: CallbackDelivery, token: str,
                           now: datetime) -> str | None:
    """One attempt of a delivery claimed under `token`: attempt row, POST, outcome (None:
    the lease was lost before the attempt row, nothing sent)."""
    with delivery_log_context(delivery):
        state = _deliver(delivery, token, now)
    if state is not None:
        callback_attempted(state=state)
    return state


def delivery_log_context(delivery: CallbackDelivery):
    item = delivery.work_item
    return log_context(work_id=str(item.pk), intake_id=str(delivery.intake_id),
                       request_id=item.request_id)


def callback_delivery_release(*, delivery_id, token: str, now: datetime | None = None) -> bool:
    """Give a claimed delivery back at once (its sender is stopping): the open attempt is
    marked interrupted and the delivery is due again, with the same webhook-id."""
    now = now or timezone.now()
    with transaction.atomic():
        # Claimed but given back before its attempt row was written: nothing was sent, so
        # the count is the rows' (the schedule and the poll count real attempts). One
        # UPDATE under the token: no read of the count for a stall to come after.
        changed = CallbackDelivery.objects.filter(pk=delivery_id, lease_token=token).update(
            state=State.PENDING, lease_token="", next_attempt_at=now,
            attempts=_attempts_written())
        if changed:
            CallbackAttempt.objects.filter(delivery_id=delivery_id,
                                           finished_at__isnull=True).update(
                finished_at=now, error="interrupted: the dispatcher stopped during this attempt")
            callback_delivery_announce(delivery_id=delivery_id)
    return bool(changed)


# --- Endpoints: the circuit breaker -------------------------------------------------------

def breaker_cooldown(opened_count: int) -> float:
    base = settings.AUXOT_CALLBACK_BREAKER_SECONDS
    return min(base * 2 ** min(opened_count, 20), settings.AUXOT_CALLBACK_BREAKER_MAX_SECONDS)


def endpoint_outcome(*, key: str, ok: bool, error: str = "", now: datetime | None = None) -> None:
    """Feed one attempt's outcome to its endpoint's breaker (see CallbackEndpoint)."""
    endpoint_outcomes(key=key, answers=[(ok, error)], now=now)


def endpoint_outcomes(*, key: str, answers: list[tuple[bool, str]],
                      now: datetime | None = None) -> None:
    """Feed several outcomes of one endpoint, in the order they came, (answered, why) each,
    to its breaker, as if one by one: an answer resets the count, the failures after the last
    one add up (one UPDATE that matches nothing while the endpoint is healthy, and, if any
    failed, one UPDATE … RETURNING under the row lock: `_endpoint_failed`)."""
    threshold = settings.AUXOT_CALLBACK_BREAKER_FAILURES
    if not key or not threshold or not answers:
        return
    now = now or timezone.now()
    answered = [index for index, (ok, _why) in enumerate(answers) if ok]
    if answered:
        CallbackEndpoint.objects.filter(key=key).filter(
            Q(consecutive_failures__gt=0) | Q(open_until__isnull=False)).update(
            consecutive_failures=0, failing_since=None, open_until=None, probe_until=None,
            opened_count=0, last_success_at=now, updated_at=now)
    failures = answers[answered[-1] + 1:] if answered else answers
    if failures:
        _endpoint_failed(key=key, count=len(failures), error=failures[-1][1], now=now)


def _endpoint_failed(*, key: str, count: int, error: str, now: datetime) -> None:
    """`count` more failures in a row for one endpoint, under its row lock: one UPDATE …
    RETURNING (the row made first if it is new), and one more UPDATE when the breaker opens
    or a half-open probe failed. Hand-written: a flaky endpoint's outcomes run it often."""
    meta = CallbackEndpoint._meta
    field = {name: meta.get_field(name) for name in (
        "failing_since", "updated_at", "open_until")}

    def db(name: str, value):
        return field[name].get_db_prep_save(value, connection)

    table, key_col = rawsql.table(CallbackEndpoint), rawsql.quote("key")
    count_up = (f"UPDATE {table} SET consecutive_failures = consecutive_failures + %s, "  # noqa: S608 (names from _meta)
                "failing_since = COALESCE(failing_since, %s), last_error = %s, updated_at = %s "
                f"WHERE {key_col} = %s RETURNING consecutive_failures, open_until, opened_count")
    params = [count, db("failing_since", now), error[:500], db("updated_at", now), key]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(count_up, params)
        row = cursor.fetchone()
        if row is None:  # its first failure: make the row (another dispatcher may race us)
            cursor.execute(f"INSERT INTO {table} ({key_col}, consecutive_failures, opened_count, "  # noqa: S608 (names from _meta)
                           f"last_error, updated_at) VALUES (%s, 0, 0, '', %s) "
                           f"ON CONFLICT ({key_col}) DO NOTHING", [key, db("updated_at", now)])
            cursor.execute(count_up, params)
            row = cursor.fetchone()
        failures, open_until, opened = row
        open_until = rawsql.instance_value(field["open_until"], open_until)
        if open_until is None:
            if failures < settings.AUXOT_CALLBACK_BREAKER_FAILURES:
                return
            pause, opened_now = breaker_cooldown(0), 1
            logger.warning("callback endpoint %s failed %s times in a row: pausing its "
                           "deliveries for %ss", key, failures, pause,
                           extra={"event": "callback.breaker_opened", "endpoint": key})
        elif open_until <= now:  # the half-open probe failed: pause longer
            pause, opened_now = breaker_cooldown(opened), opened + 1
        else:
            return
        cursor.execute(f"UPDATE {table} SET open_until = %s, opened_count = %s, "  # noqa: S608 (names from _meta)
                       f"probe_until = NULL WHERE {key_col} = %s",
                       [db("open_until", now + timedelta(seconds=pause)), opened_now, key])


def endpoint_probe_claim(*, key: str, now: datetime) -> bool:
    """Take the one probe of a half-open endpoint (its pause ran out), under a lease so no
    other dispatcher probes meanwhile; the probe's outcome closes the breaker or opens it
    again for longer. A probe whose sender died lapses with its lease."""
    return bool(CallbackEndpoint.objects.filter(key=key, open_until__lte=now).filter(
        Q(probe_until__isnull=True) | Q(probe_until__lte=now)).update(
        probe_until=now + timedelta(seconds=lease_seconds()), updated_at=now))


def callback_deliveries_due(*, exclude: set[str], limit: int,
                            exclude_orgs: set[str] = frozenset()) -> list[tuple]:
    """(id, endpoint, due at) of the `limit` deliveries due soonest (now or later), of
    endpoints not in `exclude` and of organizations not in `exclude_orgs`: one hand-written
    SELECT on the due index (the claim loop runs it on every look; the ORM would spend more
    building it than PostgreSQL running it)."""
    meta = CallbackDelivery._meta
    pk, due = meta.pk, meta.get_field("next_attempt_at")
    sql = (f"SELECT id, endpoint, next_attempt_at FROM {rawsql.table(CallbackDelivery)} "  # noqa: S608 (names from _meta)
           "WHERE next_attempt_at IS NOT NULL AND state IN (%s, %s)")
    params: list = [State.PENDING, State.DELIVERING]
    if exclude:
        sql += f" AND endpoint NOT IN ({', '.join(['%s'] * len(exclude))})"
        params += sorted(exclude)
    for org in sorted(exclude_orgs):  # an organization's id: digits, no LIKE wildcard
        sql += " AND endpoint NOT LIKE %s"
        params.append(f"%{ORG_MARK}{int(org)})")
    sql += " ORDER BY next_attempt_at LIMIT %s"
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(rawsql.instance_value(pk, key), endpoint, rawsql.instance_value(due, at))
                for key, endpoint, at in cursor.fetchall()]


def endpoints_paused(*, now: datetime) -> tuple[set[str], set[str], datetime | None]:
    """(paused keys, half-open keys free for a probe, when the next pause or probe ends)."""
    paused, probe, next_change = set(), set(), None
    meta = CallbackEndpoint._meta
    fields = [meta.get_field(name) for name in ("open_until", "probe_until")]
    with connection.cursor() as cursor:  # hand-written: the claim loop reads it every look
        cursor.execute(f"SELECT {rawsql.quote('key')}, open_until, probe_until "  # noqa: S608 (names from _meta)
                       f"FROM {rawsql.table(CallbackEndpoint)} WHERE open_until IS NOT NULL")
        rows = [(key, *(rawsql.instance_value(f, v) for f, v in zip(fields, values, strict=True)))
                for key, *values in cursor.fetchall()]
    for key, open_until, probe_until in rows:
        ends = [t for t in (open_until, probe_until) if t is not None and t > now]
        if ends:
            paused.add(key)
            soonest = open_until if open_until > now else probe_until
            next_change = soonest if next_change is None else min(next_change, soonest)
        else:
            probe.add(key)
    return paused, probe, next_change


@dataclass
class PreparedAttempt:
    """A claimed delivery's attempt, its row written: what to POST (or why nothing is sent)."""

    delivery: CallbackDelivery
    token: str
    attempt: CallbackAttempt
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    unsent: SendResult | None = None  # set when there is nothing to send


def callback_attempt_prepare(*, delivery: CallbackDelivery, token: str,
                             now: datetime) -> PreparedAttempt | None:
    """Write the attempt row (before anything is sent) and sign the body. Database only.
    None: the lease was lost (another claimed the delivery), nothing written or to send."""
    [prepared] = callback_attempts_prepare(claimed=[(delivery, token)], now=now)
    if isinstance(prepared, Exception):
        raise prepared
    return prepared


def callback_attempts_prepare(*, claimed: list[tuple[CallbackDelivery, str]],
                              now: datetime) -> list[PreparedAttempt | Exception | None]:
    """Write the attempt rows of a claimed batch in one transaction (one commit, before
    anything is sent), then sign each body. Database only, in a fixed number of queries
    whatever the batch's size: the interrupted attempts marked, the rows inserted, the steps
    and attempts of every item, the replays of the failed ones. The deliveries come from
    `callback_deliveries_claim` (intake and work item loaded with them).

    One result per delivery, in order: its PreparedAttempt, or the exception that stopped
    its body (its row is written; its lease lapses and the next attempt marks it), or None
    when its lease was lost (another dispatcher claimed it: no row, nothing to send).
    Raises only when no row was written."""
    if not claimed:
        return []
    original = claimed
    with transaction.atomic():
        # The lease check and the attempt rows are one step: a sender stalled past its lease
        # (before its POST) while another claimed the delivery writes no row and sends
        # nothing (the newer holder sends it, same webhook-id). The check renews the lease
        # under the row lock, so a claim cannot come between this commit and the POST's
        # timeout.
        held = _leases_renew(claimed, now)
        lost = {delivery.pk for delivery, _token in claimed if delivery.pk not in held}
        claimed = [(delivery, token) for delivery, token in claimed if delivery.pk in held]
        # An attempt left open was cut short by a dying worker; the receiver may have it.
        retried = [delivery.pk for delivery, _token in claimed if delivery.attempts > 1]
        if retried:  # a first attempt has no earlier row
            CallbackAttempt.objects.filter(delivery_id__in=retried,
                                           finished_at__isnull=True).update(
                finished_at=now, error="interrupted: the worker stopped during this attempt")
        attempts = rawsql.insert_rows([
            CallbackAttempt(delivery=delivery, number=delivery.attempts, started_at=now,
                            url=url_redact(delivery.url)) for delivery, _token in claimed]
        ) if claimed else []
    if not claimed:
        return [None] * len(lost)
    items = [delivery.work_item for delivery, _token in claimed]
    try:
        progress = step_progress_many(items)
        replays = _replays_of([i.pk for i in items if i.status == WorkItem.Status.FAILED])
    except Exception as exc:  # the rows are written: no attempt of the batch may be retried
        return _in_order(original, lost, [exc] * len(claimed))
    results: list[PreparedAttempt | Exception] = []
    for (delivery, token), attempt in zip(claimed, attempts, strict=True):
        prepared = PreparedAttempt(delivery=delivery, token=token, attempt=attempt)
        try:
            with delivery_log_context(delivery):
                _sign(prepared, now, progress=progress[delivery.work_item_id],
                      replayed_by=replays.get(delivery.work_item_id, []))
        except Exception as exc:
            results.append(exc)
            continue
        results.append(prepared)
    return _in_order(original, lost, results)


def _in_order(original: list, lost: set, results: list) -> list:
    """The results of the held deliveries, with None for each lost one, in claimed order."""
    if not lost:
        return results
    given = iter(results)
    return [None if delivery.pk in lost else next(given) for delivery, _token in original]


def _leases_renew(claimed: list[tuple[CallbackDelivery, str]], now: datetime) -> set:
    """The ids of these deliveries still under their lease token, their lease renewed from
    `now` (one UPDATE ... RETURNING, under the rows' locks until the caller commits)."""
    lease_end = now + timedelta(seconds=lease_seconds())
    meta = CallbackDelivery._meta
    pk, due = meta.pk, meta.get_field("next_attempt_at")
    by_token: dict[str, list] = {}
    for delivery, token in claimed:
        by_token.setdefault(token, []).append(delivery.pk)
    held = set()
    with connection.cursor() as cursor:
        for token, ids in by_token.items():
            cursor.execute(
                f"UPDATE {rawsql.table(CallbackDelivery)} SET next_attempt_at = %s "  # noqa: S608 (names from _meta)
                f"WHERE id IN ({', '.join(['%s'] * len(ids))}) AND lease_token = %s "
                "AND state = %s RETURNING id",
                [due.get_db_prep_save(lease_end, connection),
                 *(pk.get_db_prep_save(i, connection) for i in ids), token, State.DELIVERING])
            held.update(rawsql.instance_value(pk, row[0]) for row in cursor.fetchall())
    return held


def _replays_of(failed_ids: list) -> dict:
    """The replays of these failed items, oldest first, by item (one query; none if none)."""
    if not failed_ids:
        return {}
    replays: dict = {}
    for original, pk in WorkItem.objects.filter(replay_of_id__in=failed_ids).order_by(
            "created_at").values_list("replay_of_id", "pk"):
        replays.setdefault(original, []).append(str(pk))
    return replays


def _sign(prepared: PreparedAttempt, now: datetime, *, progress: tuple[list, list],
          replayed_by: list[str]) -> None:
    delivery = prepared.delivery
    try:
        secrets = intake_signing_secrets(intake=delivery.intake, now=now)
    except ValueError as exc:
        # Not sent, but retried: an admin can rotate the secret within the retry window.
        prepared.unsent = SendResult(error=str(exc), unsent=True)
        return
    view = work_item_poll_view(delivery.work_item, intake=delivery.intake, delivery=delivery,
                               replayed_by=replayed_by, progress=progress)
    prepared.body = render_json(view.body)
    prepared.headers = signed_headers(secrets=secrets, webhook_id=delivery.webhook_id,
                                      body=prepared.body, now=now)
    if delivery.work_item.request_id:  # the receiver can join its logs to the trigger's
        prepared.headers["x-request-id"] = delivery.work_item.request_id


def callback_attempt_post(prepared: PreparedAttempt) -> SendResult:
    """The POST itself. No database: any number of these may run at once."""
    if prepared.unsent is not None:
        return prepared.unsent
    return callback_post(url=prepared.delivery.url, body=prepared.body, headers=prepared.headers,
                         caller=not prepared.delivery.uses_intake_default)


def callback_attempt_finish(*, prepared: PreparedAttempt, result: SendResult) -> str:
    """Record the outcome under the lease (and feed the endpoint's breaker)."""
    state = _attempt_record(prepared.delivery, prepared.token, prepared.attempt, result)
    callback_attempted(state=state)
    return state


def callback_attempts_finish(*, outcomes: list[tuple[PreparedAttempt, SendResult]]
                             ) -> list[str]:
    """Record a batch of outcomes in one transaction (one commit), each under its lease, and
    feed the endpoints' breakers, in a fixed number of statements whatever the batch's size:
    one UPDATE of the deliveries (each guarded by its lease token), one of the attempt rows,
    and per endpoint that failed one breaker UPDATE (an answering one's matches nothing
    while it is healthy). Raises if any fails: nothing of the batch is then recorded
    (`callback_attempt_finish` records them one by one)."""
    now = timezone.now()
    if connection.vendor == "postgresql" and all(result.ok for _p, result in outcomes):
        return _delivered_all(outcomes, now)
    decided = [(prepared, result, *_outcome(prepared.delivery, result, now))
               for prepared, result in outcomes]
    with transaction.atomic():
        changed = set(rawsql.update_rows(
            CallbackDelivery, match=["id", "lease_token"],
            fields=["state", "next_attempt_at", "lease_token", "last_status", "last_error",
                    "delivered_at"],
            rows=[(p.delivery.pk, p.token, state, next_at, "", result.status, why[:500],
                   now if state == State.DELIVERED else None)
                  for p, result, state, next_at, why in decided],
            returning="id"))
        for prepared, result, _state, _next_at, _why in decided:
            _attempt_result(prepared.attempt, result, now, item=prepared.delivery.work_item)
        # Only the attempts whose delivery was still under their lease (see _attempt_record).
        rows = [(p.attempt.pk, *(getattr(p.attempt, name) for name in _ATTEMPT_RESULT_FIELDS))
                for p, *_ in decided if p.delivery.pk in changed]
        if rows:
            rawsql.update_rows(CallbackAttempt, match=["id"], fields=_ATTEMPT_RESULT_FIELDS,
                               rows=rows)
        by_endpoint: dict[str, list[tuple[bool, str]]] = {}
        for prepared, result, state, _next_at, why in decided:
            delivery = prepared.delivery
            if delivery.pk not in changed:
                continue
            if state == State.DISABLED:
                intake_callback_disable(intake=delivery.intake, now=now, url=delivery.url,
                                        reason=f"410 Gone from {url_redact(delivery.url)}")
            if result.reached_host:
                by_endpoint.setdefault(delivery.endpoint, []).append(
                    (_answered(result), why))
        for key, answers in by_endpoint.items():
            endpoint_outcomes(key=key, answers=answers, now=now)
    states = [state for _p, _r, state, _n, _w in decided]
    for state in states:
        callback_attempted(state=state)
    return states


@functools.cache
def _delivered_plan(rows: int) -> str:
    """PostgreSQL: a batch of 2xx outcomes in ONE statement (its own commit): the attempt
    rows, the deliveries under their leases, and the breakers of their endpoints reset
    (matching nothing while healthy), so a receiver's 2xx is on disk one round trip after it
    arrives. Params per row: delivery id, lease token, attempt id, status, latency, body;
    then the time."""
    one = ("(CAST(%s AS uuid), CAST(%s AS varchar(32)), CAST(%s AS bigint), "
           "CAST(%s AS integer), CAST(%s AS integer), CAST(%s AS text))")
    return (
        f"WITH v (delivery, token, attempt, status, latency, body) AS (VALUES "  # noqa: S608 (names from _meta)
        f"{', '.join([one] * rows)}), now (at) AS (VALUES (CAST(%s AS timestamptz))), "
        f"d AS (UPDATE {rawsql.table(CallbackDelivery)} t SET state = '{State.DELIVERED.value}', "
        "next_attempt_at = NULL, lease_token = '', last_status = v.status, last_error = '', "
        "delivered_at = now.at FROM v, now WHERE t.id = v.delivery AND t.lease_token = v.token "
        "RETURNING t.id, t.endpoint), "
        f"a AS (UPDATE {rawsql.table(CallbackAttempt)} t SET finished_at = now.at, "
        "status_code = v.status, latency_ms = v.latency, response_body = v.body, error = '' "
        "FROM v, now WHERE t.id = v.attempt AND v.delivery IN (SELECT id FROM d)), "
        f"e AS (UPDATE {rawsql.table(CallbackEndpoint)} t SET consecutive_failures = 0, "
        "failing_since = NULL, open_until = NULL, probe_until = NULL, opened_count = 0, "
        "last_success_at = now.at, updated_at = now.at FROM now "
        "WHERE t.key IN (SELECT endpoint FROM d) "
        "AND (t.consecutive_failures > 0 OR t.open_until IS NOT NULL)) "
        "SELECT id FROM d"
    )


def _delivered_all(outcomes: list[tuple[PreparedAttempt, SendResult]], now: datetime
                   ) -> list[str]:
    params: list = []
    for prepared, result in outcomes:
        _attempt_result(prepared.attempt, result, now, item=prepared.delivery.work_item)
        params += [prepared.delivery.pk, prepared.token, prepared.attempt.pk, result.status,
                   result.latency_ms, prepared.attempt.response_body]
    params.append(now)
    with connection.cursor() as cursor:
        cursor.execute(_delivered_plan(len(outcomes)), params)
        cursor.fetchall()
    states = [State.DELIVERED] * len(outcomes)
    for state in states:
        callback_attempted(state=state)
    return states


def _deliver(delivery: CallbackDelivery, token: str, now: datetime) -> str | None:
    prepared = callback_attempt_prepare(delivery=delivery, token=token, now=now)
    if prepared is None:  # its lease was lost: the newer holder sends it
        return None
    return _attempt_record(delivery, token, prepared.attempt, callback_attempt_post(prepared))


SAMPLE_WORK_ITEM = {
    "work_id": "00000000-0000-0000-0000-000000000000", "status": "completed",
    "output": {"message": "This is a test callback from Auxot."}, "error": None,
    "correlation_id": None, "test": True,
}


def callback_test_send(*, intake: Intake, url: str = "", actor=None,
                       ip: str | None = None) -> SendResult:
    """POST a signed sample body to the intake's URL (or `url`), same policy; show the answer.

    Each test send is audited as `callback.test_sent` in the intake's organization: who, the
    destination (redacted), the outcome (HTTP status, or what kind of error; never the
    receiver's answer or an error's text), also when nothing could be sent."""
    now = timezone.now()
    target = url or intake.callback_url
    result = _test_send(intake=intake, target=target, now=now)
    audit_record(event="callback.test_sent", org=intake.org, actor_user=actor, obj=intake,
                 now=now, ip=ip,
                 extra={"name": intake.name, "url": url_redact(target) if target else None,
                        "status": result.status, "error": result.error_kind or None,
                        "latency_ms": result.latency_ms})
    return result


def _test_send(*, intake: Intake, target: str, now: datetime) -> SendResult:
    if not target:
        return SendResult(error="The intake has no callback URL.",
                          error_kind="no_callback_url", refused=True)
    try:
        secrets = intake_signing_secrets(intake=intake, now=now)
    except ValueError as exc:
        return SendResult(error=str(exc), error_kind="no_signing_secret", refused=True)
    body = render_json({**SAMPLE_WORK_ITEM, "intake_id": str(intake.pk)})
    headers = signed_headers(secrets=secrets, webhook_id=f"msg_test_{uuid.uuid4().hex}",
                             body=body, now=now)
    return callback_post(url=target, body=body, headers=headers)
