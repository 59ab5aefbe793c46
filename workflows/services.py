import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from auxot.errors import ApplicationError, ObjectGoneError, PermissionDeniedError
from auxot.logs import current_request_id
from auxot.models import Membership
from auxot.services import audit_record
from auxot.timefmt import iso
from auxot.ttlcache import TtlCache
from workflows.handoffs import describe, pointer_value, violations
from workflows.kinds import REGISTRY
from workflows.metrics import WORK_ITEMS_FINISHED
from workflows.models import Approval, Step, StepRun, WorkerHeartbeat, Workflow, WorkItem
from workflows.providers import provider_tickets_drop
from workflows.retention import REDACTED
from workflows.signals import work_item_finished
from workflows.wake import drain_request, work_wake_notify

logger = logging.getLogger(__name__)


def work_item_enqueue(*, work_id=None) -> None:
    """Ask for a drain (the broker carries drains, not items). Never raises."""
    drain_request()


def work_item_create(**fields: Any) -> WorkItem:
    """Store a new pending item and its queue entry. Call inside the caller's transaction.

    Raises a 422 ApplicationError listing every violation when the workflow declares an
    input schema the input does not match; nothing is written then. `stored_input`, when
    given, is what is kept instead of `input` (the input with paths redacted at ingest).
    `request_id` defaults to the current request's X-Request-Id. Takes work_item_new's
    keyword arguments.
    """
    item = work_item_new(**fields)
    item.save(force_insert=True)
    # No message per item: a wake-up (PostgreSQL NOTIFY at commit, or one waiting drain).
    work_wake_notify()
    return item


def work_item_new(
    *,
    workflow: Workflow,
    input: Any,
    intake=None,
    key=None,
    ip: str | None = None,
    correlation_id: str = "",
    callback_url: str = "",
    now: datetime | None = None,
    stored_input: Any = None,
    request_id: str | None = None,
) -> WorkItem:
    """work_item_create's checked, unsaved item, for a caller that writes it with other rows
    in one statement (then it must call work_wake_notify() itself, or fold WAKE_SQL in)."""
    now = now or timezone.now()
    workflow_input_check(workflow=workflow, input=input)
    return WorkItem(
        workflow=workflow, intake=intake, input=input if stored_input is None else stored_input,
        created_by_key=key, created_by_ip=ip, correlation_id=correlation_id,
        callback_url=callback_url, created_at=now, next_run_at=now, enqueued_at=now,
        request_id=current_request_id() if request_id is None else request_id,
    )


def worker_heartbeat(*, name: str | None = None, started_at: datetime, now=None) -> None:
    now = now or timezone.now()
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    WorkerHeartbeat.objects.update_or_create(
        name=name, defaults={"seen_at": now, "started_at": started_at}
    )
    WorkerHeartbeat.objects.filter(seen_at__lt=now - timedelta(days=1)).delete()
    _last_seen.clear()  # this process's next cached read sees the beat it just wrote


def worker_last_seen() -> datetime | None:
    beat = WorkerHeartbeat.objects.order_by("-seen_at").values_list("seen_at", flat=True).first()
    return beat


# The poll's diagnosis reads the last heartbeat through this: one query per process every
# HEARTBEAT_CACHE_SECONDS, not one per poll (workers beat every few seconds and the
# diagnosis calls them gone after 60 s, so 2 s of staleness changes no answer that matters).
HEARTBEAT_CACHE_SECONDS = 2.0
_last_seen = TtlCache(HEARTBEAT_CACHE_SECONDS, maxsize=1)


def worker_last_seen_cached() -> datetime | None:
    """worker_last_seen as this process read it at most HEARTBEAT_CACHE_SECONDS ago."""
    return _last_seen.get(None, worker_last_seen)


def worker_last_seen_cache_clear() -> None:
    _last_seen.clear()


def workflow_input_check(*, workflow: Workflow, input: Any, stored: bool = False) -> None:
    """422 when `input` does not match the workflow's input schema. `stored`: an item's
    stored input (a replay), where the intake's redact_paths put "[REDACTED]" after the
    trigger was checked and before it ran; those values are not held against it."""
    found = violations(input, workflow.input_schema)
    if stored:
        found = [v for v in found if v["message"] == "is missing"
                 or pointer_value(input, v["pointer"]) != REDACTED]
    if found:
        raise ApplicationError(
            f"The body does not match the input schema of workflow '{workflow.name}': "
            f"{describe(found)}.", code="validation_failed", extra={"errors": found})


def _actor_label(user, key) -> str:
    if key is not None:
        return f"key {key.display}"
    return getattr(user, "username", "") or "system"


def _require_role(*, org_id, user, key, action: str) -> None:
    """Admins and members may act on work items; auditors only read; a deactivated user,
    nothing (a bulk replay they queued, say)."""
    if user is None:
        return
    if not user.is_active:
        raise PermissionDeniedError(f"A deactivated user may not {action}.")
    role = Membership.objects.filter(user=user, org_id=org_id).values_list(
        "role", flat=True).first()
    if role not in (Membership.Role.ADMIN, Membership.Role.MEMBER) and not (
            role is None and user.is_superuser):
        raise PermissionDeniedError(f"Only admins and members of the organization may {action}.")


def work_item_decide(*, item: WorkItem, decision: str, comment: str = "", user=None, key=None,
                     ip: str | None = None, now: datetime | None = None,
                     still_allowed: Callable[[], None] | None = None) -> Approval:
    """Record an approve/reject on the approval step the item waits at, and wake it.

    `user` is the person deciding (admin session or a personal key's owner). Team keys
    cannot decide: an approval is a person's signature. `still_allowed`: the caller's
    check, run as the transaction's last statement; it raises to roll the decision back
    (the API's key revoked meanwhile, intakes.services.intake_access_hold).
    """
    if decision not in Approval.Decision.values:
        raise ApplicationError('decision must be "approve" or "reject".')
    if user is None:
        raise PermissionDeniedError("An approval needs a person: use a personal key or the admin.")
    now = now or timezone.now()
    _require_role(org_id=item.workflow.org_id, user=user, key=key, action="approve or reject")
    with transaction.atomic():
        locked = _locked(item)
        run = _waiting_approval(locked)
        approval = Approval.objects.create(
            work_item=locked, step=run.step, decision=decision, comment=comment, decided_by=user,
            decided_via=f"key {key.display}" if key else "admin", decided_at=now)
        run.state = {**run.state, "decision": decision, "decided_by": user.get_username(),
                     "decided_at": now.isoformat(), "comment": comment}
        run.save(update_fields=["state"])
        # The poll says the decision is in until the engine applies it (moments later).
        WorkItem.objects.filter(pk=locked.pk, lease_token="").update(
            next_run_at=now, waiting_detail={
                **(locked.waiting_detail or {}), "decision": decision,
                "decided_by": user.get_username(), "decided_at": iso(now)})
        work_wake_notify()
        audit_record(event=f"work_item.{'approved' if decision == 'approve' else 'rejected'}",
                     org=locked.workflow.org, actor_user=user,
                     actor_key_lookup=key.lookup_id if key else "",
                     actor_label=_actor_label(user, key), obj=locked, ip=ip, now=now,
                     extra={"step": run.step.name, "step_position": run.step.position,
                            "comment": comment[:500]})
        if still_allowed is not None:
            still_allowed()
    return approval


def _locked(item: WorkItem) -> WorkItem:
    """The item re-read under its row lock, for the rest of the caller's transaction.

    Every action that changes a work item's fate (approve/reject, cancel) takes this lock
    and checks the state it reads here, so of two conflicting actions exactly one wins and
    the other sees what the winner did. The engine's guarded UPDATEs wait on the same lock.
    On SQLite, BEGIN IMMEDIATE already serializes the writers.

    Retention deletes finished items only, and may do so between the caller's read and
    this lock: the item is then as final as any finished one, so the action gets the
    finished item's 409, not a 500.
    """
    locked = (WorkItem.objects.select_for_update(of=("self",)).select_related("workflow__org")
              .filter(pk=item.pk).first())
    if locked is None:
        raise ApplicationError("This work item has finished, and the retention policy has "
                               "since deleted it.", code="conflict")
    return locked


def _waiting_approval(item: WorkItem) -> StepRun:
    not_waiting = ApplicationError("This work item is not waiting for an approval.",
                                   code="conflict")
    if item.status != WorkItem.Status.RUNNING or item.waiting_on != WorkItem.Waiting.APPROVAL:
        raise not_waiting
    if item.lease_token:
        raise not_waiting  # a worker is resuming it right now (its deadline came)
    steps = list(Step.objects.filter(workflow_id=item.workflow_id))
    step = steps[item.current_step]
    run = (StepRun.objects.filter(work_item=item, step=step, status=StepRun.Status.WAITING)
           .select_related("step").order_by("-attempt").first())
    if run is None or Approval.objects.filter(work_item=item, step=step).exists():
        raise not_waiting
    return run


def work_item_cancel(*, item: WorkItem, user=None, key=None, reason: str = "",
                     ip: str | None = None, now: datetime | None = None,
                     still_allowed: Callable[[], None] | None = None) -> WorkItem:
    """End a pending or running item as failed/canceled. A running step's result is
    discarded: the engine stores results only while it holds the lease cleared here.
    `still_allowed`: as work_item_decide's."""
    now = now or timezone.now()
    _require_role(org_id=item.workflow.org_id, user=user, key=key, action="cancel work")
    who = _actor_label(user, key)
    with transaction.atomic():
        locked = _locked(item)
        steps = list(Step.objects.filter(workflow_id=locked.workflow_id))
        step = steps[locked.current_step] if locked.current_step < len(steps) else None
        _cancelable(locked, step)
        StepRun.objects.filter(work_item=locked, status=StepRun.Status.WAITING).update(
            status=StepRun.Status.DISCARDED, finished_at=now)
        work_item_finish(item=locked, status=WorkItem.Status.FAILED, now=now,
                         error=_cancel_error(step, who, reason), steps=steps,
                         event="work_item.canceled", actor_user=user,
                         actor_key_lookup=key.lookup_id if key else "", actor_label=who, ip=ip,
                         extra={"reason": reason[:500]})
        if still_allowed is not None:
            still_allowed()
    item.refresh_from_db()
    return item


def work_item_finish(*, item: WorkItem, status: str, now: datetime, output: Any = None,
                     error: dict | None = None, lease_token: str | None = None,
                     steps: list[Step] | None = None, event: str, actor_user=None,
                     actor_key_lookup: str = "", actor_label: str = "", ip: str | None = None,
                     extra: dict | None = None) -> bool:
    """The one way a work item reaches `completed` or `failed`; False if it was not ours.

    With `lease_token` it finishes only while that worker still holds the item (the
    engine); without, the caller holds the row lock (a cancel). In one transaction: the
    terminal state, the provider ticket dropped (only when a step of `steps` takes tickets;
    None: always), the audit row `event`; after commit, `work_item_finished` is sent.
    """
    rows = WorkItem.objects.filter(pk=item.pk)
    if lease_token is not None:
        rows = rows.filter(lease_token=lease_token)
    with transaction.atomic():
        if rows.update(status=status, output=output, error=error, finished_at=now,
                       next_run_at=None, lease_token="", waiting_on="", waiting_since=None,
                       waiting_detail={}) != 1:
            return False
        if steps is None or any(_takes_tickets(step) for step in steps):
            provider_tickets_drop(work_id=item.pk)
        audit_record(event=event, org=item.workflow.org, actor_user=actor_user,
                     actor_key_lookup=actor_key_lookup, actor_label=actor_label, obj=item,
                     ip=ip, now=now, extra=extra)
        transaction.on_commit(partial(_finished_announce, item.pk))
    work_item_finish_observe(item=item, status=status, now=now)
    return True


def work_item_finish_observe(*, item: WorkItem, status: str, now: datetime) -> None:
    """The metric and the log line of a finished item (also for items a drain finished in
    one batch commit)."""
    WORK_ITEMS_FINISHED.labels(status=status).inc()
    logger.info("work item %s %s", item.pk, status, extra={
        "event": "work_item.finished", "status": status, "work_id": str(item.pk),
        "intake_id": str(item.intake_id) if item.intake_id else None,
        "request_id": item.request_id or None,
        "duration_ms": round((now - item.created_at).total_seconds() * 1000, 1)})


def _takes_tickets(step: Step) -> bool:
    kind = REGISTRY.get(step.kind)
    return kind is None or kind.uses_providers  # an unknown kind: drop, to be safe


def _finished_announce(work_id) -> None:
    work_item_finished.send(sender=WorkItem, work_item=WorkItem.objects.get(pk=work_id))


def _cancelable(item: WorkItem, step: Step | None) -> None:
    """Raise a 409 unless a cancel may end `item` now (call with the item locked)."""
    if item.status not in WorkItem.ACTIVE:
        raise ApplicationError("This work item has already finished.", code="conflict")
    if (step is not None and item.waiting_on == WorkItem.Waiting.APPROVAL
            and Approval.objects.filter(work_item=item, step=step).exists()):
        # The approver was told their decision stands: a cancel may not undo it unseen.
        raise ApplicationError(
            "An approval decision was just recorded for this work item and it is resuming "
            "with it; cancel again once it has moved on.", code="conflict")


def _cancel_error(step: Step | None, who: str, reason: str) -> dict:
    message = f"Canceled by {who}" + (f": {reason}" if reason else ".")
    return {"code": "canceled", "message": message, "step": step.name if step else None,
            "step_position": step.position if step else None}


def work_item_run(*, workflow: Workflow, input: Any, user, ip: str | None = None) -> WorkItem:
    """"New task": a person runs a workflow by hand (admins and members). Audited."""
    _require_role(org_id=workflow.org_id, user=user, key=None, action="run workflows")
    now = timezone.now()
    with transaction.atomic():
        # Its row held (FOR NO KEY UPDATE: runs of it do not wait on each other's item
        # inserts): deleted since it was read (or being deleted), it gets no item, which
        # would have been an IntegrityError; a deletion that comes later waits, then sees
        # the item.
        if not Workflow.objects.select_for_update(no_key=True).filter(pk=workflow.pk).exists():
            raise ObjectGoneError(workflow)
        item = work_item_create(workflow=workflow, input=input, intake=None, ip=ip,
                                correlation_id=f"admin:{user.username}", now=now)
        audit_record(event="work_item.created", org=workflow.org, actor_user=user, obj=item,
                     ip=ip, now=now, extra={"workflow": workflow.name, "via": "admin"})
    return item
