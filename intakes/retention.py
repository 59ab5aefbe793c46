"""Retention: per intake, redact finished work items' payloads after N days and delete the
items after M days (AUXOT_RETENTION_* defaults). Run by a django-q2 schedule created
idempotently after every `migrate`, in batches, each batch audited in its own transaction.

One tenant never holds up the others: the scopes (each intake, and each organization's
items started without one) take turns, one batch each per round, so a large backlog in one
cannot use the whole time budget before the next is looked at; and a scope that fails is
logged and left for the next run while the others go on.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from auxot.models import AuditEvent, AuditLogEntry, Organization
from auxot.services import audit_record
from intakes.models import CallbackAttempt, CallbackDelivery, Intake
from workflows.models import WorkItem
from workflows.retention import work_items_redact

ACCEPTED = "work_item.accepted"

logger = logging.getLogger(__name__)
SCHEDULE_NAME = "auxot.retention"
TASK = "intakes.tasks.retention_run"


@dataclass
class RetentionReport:
    redacted: int = 0
    deleted: int = 0
    finished: bool = True  # False: the time budget ran out; the next run goes on
    intakes: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)  # scopes that raised (logged; next run retries)


def _days(value: int | None, default: int) -> int:
    return default if value is None else value


def intake_retention(intake: Intake | None) -> tuple[int, int]:
    """(redact after days, delete after days) for an intake's items; 0 means never."""
    if intake is None:
        return settings.AUXOT_RETENTION_PAYLOAD_DAYS, settings.AUXOT_RETENTION_DELETE_DAYS
    return (_days(intake.payload_retention_days, settings.AUXOT_RETENTION_PAYLOAD_DAYS),
            _days(intake.item_retention_days, settings.AUXOT_RETENTION_DELETE_DAYS))


def _scopes():
    """(org, intake or None, finished items of that scope): every intake, then the items
    started without one (run by hand in the admin), per organization."""
    for intake in Intake.objects.select_related("org").order_by("created_at"):
        yield intake.org, intake, WorkItem.objects.filter(intake=intake)
    no_intake = WorkItem.objects.filter(intake__isnull=True, finished_at__isnull=False)
    org_ids = no_intake.values_list("workflow__org_id", flat=True).distinct()
    for org in Organization.objects.filter(pk__in=org_ids):
        yield org, None, no_intake.filter(workflow__org=org)


def _cutoff(now: datetime, days: int) -> datetime | None:
    """`days` before `now`; None when that is before any date (nothing is that old)."""
    try:
        return now - timedelta(days=days)
    except OverflowError:
        return None


def _batches(queryset, batch: int, *, again: bool = False):
    """The queryset's ids, `batch` at a time, oldest finished first. Each batch's query
    starts after the last item of the batch before (by finish time, then id): the items a
    pass has redacted stay in the index it walks, and the ones it deleted stay there until a
    vacuum, so a batch that started from the oldest item read all of them again (a pass
    cost the square of its backlog). `again`: a walk that found anything is followed by one
    more from the start, for items a later batch made due (an item whose replay it deleted);
    the last walk finds nothing."""
    while True:
        after, found = None, False
        while True:
            page = queryset.order_by("finished_at", "pk")
            if after is not None:
                finished_at, pk = after
                page = (page.filter(finished_at__gte=finished_at)
                        .exclude(finished_at=finished_at, pk__lte=pk))
            rows = list(page.values_list("pk", "finished_at")[:batch])
            if not rows:
                break
            found, after = True, (rows[-1][1], rows[-1][0])
            yield [pk for pk, _ in rows]
        if not (again and found):
            return


def _audit(event: str, org, intake, count: int, days: int, now: datetime) -> None:
    audit_record(event=event, org=org, obj=intake, now=now, actor_label="retention",
                 extra={"count": count, "older_than_days": days,
                        "intake": intake.name if intake else None})


def _redact(org, intake, items, days: int, *, now, batch) -> Iterator[int]:
    """Redact the scope's items finished more than `days` ago; yields each batch's count."""
    cutoff = _cutoff(now, days)
    if cutoff is None:
        return
    due = items.filter(finished_at__lt=cutoff, redacted_at__isnull=True)
    for ids in _batches(due, batch):
        with transaction.atomic():
            ids = _no_callback_in_flight(ids)
            count = work_items_redact(ids=ids, now=now)
            # By the attempts' delivery_id (its index); a join let PostgreSQL read them all.
            deliveries = CallbackDelivery.objects.filter(work_item_id__in=ids).values("pk")
            (CallbackAttempt.objects.filter(delivery_id__in=deliveries)
             .exclude(response_body="").update(response_body=""))
            _audit("work_items.redacted", org, intake, count, days, now)
        yield count


def _no_callback_in_flight(ids: list) -> list:
    """The batch less the items a callback attempt is in flight for, their deliveries locked
    until the batch commits. An attempt keeps the receiver's answer unless its item was
    redacted when it was claimed: one in flight now would store it after this redaction (so
    its item waits for the next pass), and a claim from now on waits for this commit and
    then reads the item redacted."""
    busy = {work_id for work_id, state in CallbackDelivery.objects.select_for_update()
            .filter(work_item_id__in=ids).order_by("pk").values_list("work_item_id", "state")
            if state == CallbackDelivery.State.DELIVERING}
    return [pk for pk in ids if pk not in busy]


def _delete(org, intake, items, days: int, *, now, batch) -> Iterator[int]:
    """Delete the scope's items finished more than `days` ago; yields each batch's count.
    An item that has a replay stays until its replays are gone (a replay keeps the item it
    takes forward: `replay_of` protects it); they finish later, so they are deleted first
    and the item follows in a later batch."""
    cutoff = _cutoff(now, days)
    if cutoff is None:
        return
    due = items.filter(finished_at__lt=cutoff).exclude(replays__isnull=False)
    for ids in _batches(due, batch, again=True):
        with transaction.atomic():
            ids = _still_due(ids)
            _accepted_keep(ids)
            # Only the ids: the deletion needs no item's payload (no delete signal reads one).
            count = (WorkItem.objects.filter(pk__in=ids).only("pk").delete()[1]
                     .get(WorkItem._meta.label, 0))
            _audit("work_items.deleted", org, intake, count, days, now)
        yield count


def _still_due(ids) -> list:
    """The batch's items locked (by id: the order a bulk replay locks them in, so neither
    waits on the other in a circle), less those a replay took forward since the batch was
    read. A replay locks its original before it commits, so once these rows are held no
    replay of them can begin, and one that committed first is seen here: the item stays
    (its replay protects it) instead of failing the whole batch."""
    locked = list(WorkItem.objects.select_for_update(of=("self",)).filter(pk__in=ids)
                  .order_by("pk").values_list("pk", flat=True))
    replayed = set(WorkItem.objects.filter(replay_of_id__in=locked)
                   .values_list("replay_of_id", flat=True))
    return [pk for pk in locked if pk not in replayed]


def _accepted_keep(ids) -> None:
    """The accepted triggers of items about to be deleted become audit rows of their own:
    the audit log reads them from the items (auxot.AuditLogEntry) and keeps them forever.
    By the view's id, which for these entries is the item's id (the work items' primary
    key): by object_id, text no index serves, PostgreSQL read every work item per batch.
    An item whose acceptance is already a row of its own (accepted before the view) keeps
    that row; it is not copied (that row's id is not the item's)."""
    entries = AuditLogEntry.objects.filter(
        id__in=ids, event=ACCEPTED, object_type=WorkItem._meta.label_lower).order_by()
    AuditEvent.objects.bulk_create([
        AuditEvent(org_id=e.org_id, created_at=e.created_at, event=e.event,
                   actor_key_lookup=e.actor_key_lookup, actor_label=e.actor_label,
                   object_type=e.object_type, object_id=e.object_id, ip=e.ip, extra=e.extra)
        for e in entries])


def _scope_work(org, intake, items, report: RetentionReport, *, now, batch) -> Iterator[None]:
    """One scope's retention, a batch per step (deleting first: an item past both ages is
    not redacted on its way out)."""
    redact_days, delete_days = intake_retention(intake)
    name = str(intake.pk) if intake else f"org:{org.slug}"
    for event, days in (("deleted", delete_days), ("redacted", redact_days)):
        if not days:
            continue
        work = _delete if event == "deleted" else _redact
        for count in work(org, intake, items, days, now=now, batch=batch):
            setattr(report, event, getattr(report, event) + count)
            redacted, deleted = report.intakes.get(name, (0, 0))
            report.intakes[name] = ((redacted + count, deleted) if event == "redacted"
                                    else (redacted, deleted + count))
            yield


def retention_task_budget() -> float:
    """The scheduled pass's time budget: 240 s, and always well inside the cluster's task
    timeout (AUXOT_TASK_TIMEOUT_SECONDS, 300 by default), which kills a task mid-batch: set
    below 240 s, every scheduled pass was killed and its batch in hand rolled back."""
    return min(240.0, settings.AUXOT_TASK_TIMEOUT_SECONDS * 0.8)


def retention_run(*, now: datetime | None = None, batch: int | None = None,
                  budget_seconds: float = 240.0) -> RetentionReport:
    """One pass over every scope, taking turns a batch at a time. Stops at the time budget;
    the next run resumes. A scope that raises is logged and skipped until the next run."""
    now = now or timezone.now()
    batch = batch or settings.AUXOT_RETENTION_BATCH
    deadline = time.monotonic() + budget_seconds
    report = RetentionReport()
    turns = [(org, intake, _scope_work(org, intake, items, report, now=now, batch=batch))
             for org, intake, items in _scopes()]
    while turns:
        for turn in list(turns):
            if time.monotonic() >= deadline:
                report.finished = False
                logger.warning("retention stopped at its time budget; the next run continues")
                turns = []
                break
            org, intake, work = turn
            try:
                next(work)
            except StopIteration:
                turns.remove(turn)
            except Exception:
                # Whatever one scope's data or settings do, the others still run.
                scope = str(intake.pk) if intake else f"org:{org.slug}"
                logger.exception("retention failed for %s; the next run retries it", scope,
                                 extra={"event": "retention.failed", "scope": scope})
                report.failed.append(scope)
                turns.remove(turn)
    logger.info("retention: %s redacted, %s deleted", report.redacted, report.deleted,
                extra={"event": "retention.run", "redacted": report.redacted,
                       "deleted": report.deleted, "failed": len(report.failed)})
    return report


def retention_schedule_ensure() -> bool:
    """Create (or correct) the django-q2 schedule; True when it changed. Safe to repeat."""
    from django.db import connection
    from django_q.models import Schedule

    if Schedule._meta.db_table not in connection.introspection.table_names():
        return False  # `migrate` of a single app before django_q's tables exist
    from intakes.housekeeping import schedule_ensure

    wanted = {"func": TASK, "schedule_type": Schedule.MINUTES,
              "minutes": settings.AUXOT_RETENTION_EVERY_MINUTES, "repeats": -1}
    return schedule_ensure(name=SCHEDULE_NAME, wanted=wanted, correct=True,
                           next_run=timezone.now())
