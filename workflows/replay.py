"""Replay: take a failed work item forward as a NEW item; the original stays failed forever.

- From the failed step (default): the steps that completed before it are carried into the
  new item's ledger (status `carried`, pointing at the attempt that really ran) and are not
  run again. The failed step is sent with the Idempotency-Key it had in the original (its
  attempts ended without a known result), so a receiver honouring the key sees one effect.
- From the start: every step runs again with the original input and new keys: a new run.

Bulk replays are `ReplayBatch` rows worked through by django-q2 in chunks: each chunk
commits its new items together with the batch's cursor under the batch's row lock, and a
unique (batch, original) constraint backs it up, so a crash at any point replays each
item exactly once. A stalled batch is handed to a worker again by the ticker.
"""

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from auxot.broker import task_enqueue
from auxot.errors import ApplicationError
from auxot.logs import current_request_id
from auxot.models import Organization
from auxot.services import audit_record
from auxot.storable import text_storable
from workflows.models import ReplayBatch, Step, StepRun, WorkItem, step_key_name
from workflows.services import (
    _actor_label,
    _require_role,
    work_item_enqueue,
    workflow_input_check,
)

FROM_FAILED_STEP = "failed_step"
FROM_START = "start"
BATCH_TASK = "workflows.tasks.replay_batch_run"
BATCH_MAX_ITEMS = 20_000  # one confirmation, one batch; more: replay the rest afterwards
TASK_BUDGET_SECONDS = 10.0  # then the task hands the batch to a fresh task (fair to others)
CANCELED = "canceled"
REASON_MAX_CHARS = 500  # as a cancel's


@dataclass(frozen=True)
class ReplayPlan:
    steps: list[Step]  # the workflow's steps now, in order
    carried: list[StepRun]  # the original's completed attempts still in it, in step order

    @cached_property
    def carried_ids(self) -> set:
        return {run.step_id for run in self.carried}

    @property
    def carried_steps(self) -> list[Step]:
        return [step for step in self.steps if step.pk in self.carried_ids]

    @property
    def resume_index(self) -> int:
        """The first step the replay runs: the first one not carried."""
        return next((i for i, step in enumerate(self.steps) if step.pk not in self.carried_ids),
                    len(self.steps))

    @property
    def resume_step(self) -> Step | None:
        return self.steps[self.resume_index] if self.resume_index < len(self.steps) else None

    @property
    def to_run(self) -> list[Step]:
        return [step for step in self.steps if step.pk not in self.carried_ids]


def replay_plan(*, item: WorkItem, start_over: bool) -> ReplayPlan:
    """Which steps a replay carries and which it runs.

    Carried: every step of the workflow (the same Step row, wherever it stands now) that
    completed in the original. A step added, moved or renumbered since changes what runs
    around them, never that they ran: the engine passes a carried step where it stands.
    """
    steps = list(Step.objects.filter(workflow_id=item.workflow_id))
    if start_over:
        return ReplayPlan(steps=steps, carried=[])
    done: dict[int, StepRun] = {}
    for run in StepRun.objects.filter(work_item=item, status__in=StepRun.DONE):
        done[run.step_id] = run
    return ReplayPlan(steps=steps, carried=[done[step.pk] for step in steps if step.pk in done])


def replay_refusal_why(item: WorkItem) -> tuple[str, str] | None:
    """(a short reason, for a bulk replay's skip counts; the message a caller gets) when
    `item` cannot be replayed, or None."""
    if item.status != WorkItem.Status.FAILED:
        return "not failed", (
            f"Only failed work items can be replayed; this one is {item.status}. "
            "Completed work is final; pending or running work is still in progress.")
    if (item.error or {}).get("code") == CANCELED:
        # A cancel is a person's decision to stop this work: a replay would quietly undo it.
        return "canceled", (
            "This work item was canceled on purpose, so it is not replayed; trigger the "
            "intake again if the work is wanted after all.")
    if not item.workflow.active:
        return "workflow deactivated", "The workflow of this work item is deactivated."
    if item.intake_id is not None and not item.intake.active:
        # Taken out of service: its callers get 404 for it (a replay, a poll of the new
        # item), so the admin does not run new work, with its side effects, through it.
        return "intake deactivated", (
            "The intake of this work item is deactivated; reactivate it to replay its work.")
    if item.redacted_at is not None:
        # Retention removed its input and outputs: a replay would send nulls downstream
        # (under the original's Idempotency-Key) and call that a success.
        return "removed by retention", (
            "This work item's input and step outputs were removed by the retention policy, "
            "so there is nothing to take forward; trigger the intake again.")
    replay = item.replays.order_by("created_at").first()
    if replay is not None:
        # Twice would run every step from the failed one twice, under two new keys.
        return "already replayed", (
            f"This work item was already replayed as {replay.pk} ({replay.status}). If that "
            "replay failed, replay it instead: the chain and the failed step's "
            "Idempotency-Key are kept.")
    return None


def replay_refusal(item: WorkItem) -> str | None:
    """Why `item` cannot be replayed, or None."""
    why = replay_refusal_why(item)
    return why[1] if why else None


def _reason_storable(reason: str) -> str:
    """A reason as typed, storable (an admin form's NUL is not a 500), cut to the limit."""
    return text_storable(reason)[:REASON_MAX_CHARS]


class NotReplayable(ApplicationError):
    """409 `not_replayable`; `reason` is the short one a bulk replay counts."""

    def __init__(self, reason: str, message: str):
        super().__init__(message, code="not_replayable")
        self.reason = reason


def work_item_replay(*, item: WorkItem, start_over: bool = False, user=None, key=None,
                     ip: str | None = None, batch: ReplayBatch | None = None,
                     reason: str = "", now: datetime | None = None) -> WorkItem:
    """Create the replay of failed `item`, audited as work_item.replayed with who and
    `reason` (why; a batch's own reason for its items). Call it inside the caller's
    transaction when it must commit with something else (idempotency).

    Admins and members may replay (a user's role is checked in the item's organization;
    a key's access to the intake was checked by the caller). 409 `not_replayable` for an
    item that is not failed, was canceled, or whose workflow is deactivated.
    """
    now = now or timezone.now()
    _require_role(org_id=item.workflow.org_id, user=user, key=key, action="replay work")
    if why := replay_refusal_why(item):
        raise NotReplayable(*why)
    workflow_input_check(workflow=item.workflow, input=item.input, stored=True)
    plan = replay_plan(item=item, start_over=start_over)
    with transaction.atomic():
        # Serialized on the original's row (its alone: a lock on the workflow would hold
        # every trigger of it), then asked again: two replays at once, by two callers or two
        # clicks, make one new item and one 409.
        locked = (WorkItem.objects.select_for_update(of=("self",))
                  .select_related("workflow", "intake").filter(pk=item.pk).first())
        if locked is None:
            # Retention deleted it (past its intake's delete age) while this replay waited
            # for its row: a 409 that says so, not a 500.
            raise NotReplayable("deleted", (
                "This work item was deleted by the retention policy while it was being "
                "replayed; trigger the intake again."))
        item = locked
        if why := replay_refusal_why(item):
            raise NotReplayable(*why)
        new = _replay_create(item=item, plan=plan, start_over=start_over, key=key, ip=ip,
                             batch=batch, now=now)
        _replay_audit(item=item, new=new, plan=plan, start_over=start_over, user=user, key=key,
                      ip=ip, batch=batch, reason=batch.reason if batch else reason, now=now)
    return new


def _replay_keys(item: WorkItem, plan: ReplayPlan, start_over: bool) -> dict[str, str]:
    """The steps the original began but did not complete (the failed one) keep the
    Idempotency-Key it sent them with (through a chain of replays: the key of the first item
    that sent it), by step id, so steps renumbered since change nothing; every other step
    gets the new item's own key."""
    if start_over:
        return {}
    begun = list(StepRun.objects.filter(work_item=item).exclude(status__in=StepRun.DONE)
                 .order_by("started_at", "pk").values_list("step_id", flat=True))
    failed = begun[-1] if begun else None
    keys = {}
    for step in plan.steps:
        if step.pk in begun and step.pk not in plan.carried_ids:
            keys[step_key_name(step)] = _sent_key(item, step, failed=step.pk == failed)
    return keys


def _sent_key(item: WorkItem, step: Step, *, failed: bool) -> str:
    """The key `item` sent `step` with: by its position then (the failure records the
    failed step's; a step's position may have changed since)."""
    if known := item.step_keys.get(step_key_name(step)):
        return known
    position = (item.error or {}).get("step_position") if failed else None
    if not isinstance(position, int) or isinstance(position, bool):
        position = step.position
    return item.step_keys.get(str(position)) or f"{item.pk}:{position}"


def _replay_create(*, item: WorkItem, plan: ReplayPlan, start_over: bool, key, ip,
                   batch: ReplayBatch | None, now: datetime) -> WorkItem:
    resume = plan.resume_step
    new = WorkItem.objects.create(
        workflow_id=item.workflow_id, intake_id=item.intake_id, input=item.input,
        created_by_key=key, created_by_ip=ip, correlation_id=item.correlation_id,
        callback_url=item.callback_url, request_id=current_request_id(),
        created_at=now, next_run_at=now, enqueued_at=now,
        current_step=plan.resume_index, replay_of=item, replay_batch=batch,
        resumed_from_step=resume.position if resume else None,
        step_keys=_replay_keys(item, plan, start_over),
    )
    StepRun.objects.bulk_create([
        StepRun(work_item=new, step_id=run.step_id, attempt=1, status=StepRun.Status.CARRIED,
                started_at=run.started_at, finished_at=run.finished_at, output=run.output,
                state={"carried_from": (run.state or {}).get("carried_from") or {
                    "work_id": str(run.work_item_id), "attempt": run.attempt}})
        for run in plan.carried])
    if settings.REDIS_URL:
        transaction.on_commit(lambda: work_item_enqueue(work_id=new.pk))
    else:
        work_item_enqueue(work_id=new.pk)  # the ORM broker's row commits with the item
    return new


def _replay_audit(*, item: WorkItem, new: WorkItem, plan: ReplayPlan, start_over: bool, user,
                  key, ip, batch: ReplayBatch | None, reason: str, now: datetime) -> None:
    who = dict(actor_user=user, actor_key_lookup=key.lookup_id if key else "",
               actor_label=_actor_label(user, key), ip=ip, now=now, org=item.workflow.org)
    extra: dict[str, Any] = {
        "replay_work_id": str(new.pk),
        "from": FROM_START if start_over else FROM_FAILED_STEP,
        "resumed_from_step": new.resumed_from_step,
        "carried_steps": [step.position for step in plan.carried_steps],
        "reason": _reason_storable(reason),
    }
    if batch is not None:
        extra["batch"] = str(batch.pk)
    audit_record(event="work_item.replayed", obj=item, extra=extra, **who)
    audit_record(event="work_item.created", obj=new, **who,
                 extra={"replay_of": str(item.pk), "via": "replay",
                        "resumed_from_step": new.resumed_from_step,
                        "reason": extra["reason"]})


# --- The admin's Failed work view: open failures grouped ------------------------------------
def failed_unreplayed(*, org_ids: list[int] | None, since: datetime) -> QuerySet:
    """Failed items finished since `since` that a replay would take forward (`replayable`:
    not canceled, not yet replayed, workflow and intake active); None: any org."""
    items = replayable(WorkItem.objects.filter(finished_at__gte=since))
    if org_ids is not None:
        items = items.filter(workflow__org_id__in=org_ids)
    return items.annotate(error_code=KeyTextTransform("code", "error"),
                          error_step=KeyTextTransform("step", "error"),
                          error_position=KeyTextTransform("step_position", "error"))


def failed_work_groups(*, org_ids: list[int] | None, since: datetime) -> list[dict]:
    """Rows of {workflow_id, workflow, org_id, step, position, code, count, first, last}."""
    rows = (failed_unreplayed(org_ids=org_ids, since=since)
            .values("workflow_id", "workflow__name", "workflow__org_id", "error_step",
                    "error_position", "error_code")
            .annotate(count=Count("id"), first=Min("finished_at"), last=Max("finished_at"))
            .order_by("-count", "workflow__name"))
    return [{"workflow_id": row["workflow_id"], "workflow": row["workflow__name"],
             "org_id": row["workflow__org_id"], "step": row["error_step"] or "",
             "position": row["error_position"] or "", "code": row["error_code"] or "",
             "count": row["count"], "first": row["first"], "last": row["last"]}
            for row in rows]


def failed_group_items(*, org_ids: list[int] | None, since: datetime, workflow_id,
                       code: str, position: str) -> QuerySet:
    """The items of one Failed work group (as failed_work_groups keyed them)."""
    items = failed_unreplayed(org_ids=org_ids, since=since).filter(workflow_id=workflow_id)
    items = items.filter(error__code=code) if code else items.filter(
        Q(error__code__isnull=True) | Q(error__code=""))
    if (at := _position(position)) is not None:
        return items.filter(error__step_position=at)
    return items.filter(Q(error__step_position__isnull=True) | Q(error__isnull=True))


def replayable(items: QuerySet) -> QuerySet:
    """The items of `items` a replay would take forward (what replay_refusal allows)."""
    return items.filter(status=WorkItem.Status.FAILED, workflow__active=True,
                        redacted_at__isnull=True, replays__isnull=True).exclude(
        error__code=CANCELED).exclude(intake__active=False)


def replay_summary(items: QuerySet) -> list[dict]:
    """For a confirmation page, per workflow and failed step: how many items, which steps
    are carried and which run (from the failed step), as `replay_plan` decides them for the
    group's first item (a group failed at one step: the same steps completed before it).
    One query, plus three per group."""
    grouped = replayable(items).annotate(
        error_position=KeyTextTransform("step_position", "error"))
    rows = (grouped.values("workflow_id", "workflow__name", "error_position")
            .annotate(count=Count("id")).order_by("workflow__name", "error_position"))
    summary = []
    for row in list(rows):
        at = row["error_position"]
        sample = grouped.filter(workflow_id=row["workflow_id"], **(
            {"error_position": at} if at is not None else {"error_position__isnull": True})
        ).select_related("workflow").order_by().first()
        plan = replay_plan(item=sample, start_over=False) if sample else ReplayPlan([], [])
        summary.append({
            "workflow": row["workflow__name"], "count": row["count"],
            "failed_step": _failed_step_name(sample, plan),
            "carried": [step.name for step in plan.carried_steps],
            "to_run": [step.name for step in plan.to_run]})
    return summary


def _failed_step_name(item: WorkItem | None, plan: ReplayPlan) -> str:
    position = _position((item.error or {}).get("step_position")) if item else None
    return next((step.name for step in plan.to_run if step.position == position), "-")


def _position(value) -> int | None:
    """A step position from a query string or an item's error: a decimal integer, or None."""
    text = str(value if value is not None else "")
    return int(text) if text.isdecimal() and text.isascii() else None


# --- Bulk replay ----------------------------------------------------------------------------
def replay_batch_ids(items: QuerySet) -> list:
    """What one bulk replay of `items` takes: the oldest failures first, at most
    BATCH_MAX_ITEMS (the rest stay failed, and in their group, for the next one)."""
    return list(items.order_by("finished_at", "pk").values_list("pk", flat=True)
                [:BATCH_MAX_ITEMS])


def replay_batch_cap() -> int:
    return BATCH_MAX_ITEMS


def replay_batch_create(*, org: Organization, work_ids: list, user, start_over: bool = False,
                        label: str = "", reason: str = "", ip: str | None = None,
                        now: datetime | None = None) -> ReplayBatch:
    """Store a bulk replay and hand it to a worker; returns at once (the web request never
    replays thousands of items itself)."""
    now = now or timezone.now()
    _require_role(org_id=org.pk, user=user, key=None, action="replay work")
    ids = list(dict.fromkeys(str(pk) for pk in work_ids))
    if not ids:
        raise ApplicationError("Select at least one failed work item to replay.")
    if len(ids) > BATCH_MAX_ITEMS:
        raise ApplicationError(f"At most {BATCH_MAX_ITEMS} items per bulk replay.")
    with transaction.atomic():
        # One bulk replay created at a time per organization (a double click, two operators
        # on one Failed work group): the second sees the first's items as taken. NO KEY:
        # rows that merely reference the organization (audit rows, a batch's chunk) go on.
        list(Organization.objects.select_for_update(no_key=True).filter(pk=org.pk)
             .values_list("pk"))
        running = _running_batches(org=org, ids=ids)
        if running:
            ids = [pk for pk in ids if pk not in running]
            if not ids:
                raise ReplayBatchRunning(next(iter(running.values())))
        batch = ReplayBatch.objects.create(
            org=org, start_over=start_over, label=label[:300], work_ids=ids, total=len(ids),
            reason=_reason_storable(reason), created_by=user, created_at=now,
            progressed_at=now, enqueued_at=now)
        audit_record(event="replay_batch.created", org=org, actor_user=user, obj=batch, ip=ip,
                     now=now, extra={"items": len(ids), "label": label[:300],
                                     "from": FROM_START if start_over else FROM_FAILED_STEP,
                                     "reason": batch.reason})
        transaction.on_commit(lambda: replay_batch_enqueue(batch_id=batch.pk))
    return batch


class ReplayBatchRunning(ApplicationError):
    """Every item asked for is in a bulk replay that has not reached it yet: `batch`."""

    def __init__(self, batch: ReplayBatch):
        who = batch.created_by or "a deleted user"
        super().__init__(
            f"These items are already being replayed by the bulk replay {who} started at "
            f"{batch.created_at:%Y-%m-%d %H:%M:%S} UTC; no second one was started.",
            code="conflict")
        self.batch = batch


def _running_batches(*, org: Organization, ids: list[str]) -> dict[str, ReplayBatch]:
    """Of `ids`, those a running bulk replay of `org` has yet to handle, with that batch."""
    wanted, taken = set(ids), {}
    for batch in (ReplayBatch.objects.select_related("created_by")
                  .filter(org=org, status=ReplayBatch.Status.RUNNING).order_by("created_at")):
        for pk in wanted.intersection(batch.work_ids[batch.cursor:]):
            taken.setdefault(pk, batch)
    return taken


def replay_batch_enqueue(*, batch_id) -> None:
    """Never raises: a lost message is recovered by the ticker (replay_batches_wake)."""
    task_enqueue(task=BATCH_TASK, arg=str(batch_id), name=f"replay-{batch_id}")


def replay_batch_process(*, batch_id, budget_seconds: float = TASK_BUDGET_SECONDS) -> int:
    """The task body: replay chunks until done or the budget is spent, then hand the rest
    to a new task. Safe to run twice, also at the same time. Returns items handled."""
    deadline = time.monotonic() + budget_seconds
    handled = 0
    while True:
        count, more = replay_batch_chunk(batch_id=batch_id)
        handled += count
        if not more:
            return handled
        if time.monotonic() >= deadline:
            ReplayBatch.objects.filter(pk=batch_id).update(enqueued_at=timezone.now())
            replay_batch_enqueue(batch_id=batch_id)
            return handled


def replay_batch_chunk(*, batch_id) -> tuple[int, bool]:
    """Replay the next chunk of the batch in ONE transaction with the cursor's advance.

    Returns (items handled, whether more remain). The batch row is locked for the chunk
    (skip_locked: a twin task finds nothing to do and returns); on SQLite the immediate
    transaction serializes the writers the same way.
    """
    now = timezone.now()
    with transaction.atomic():
        batch = (ReplayBatch.objects.select_for_update(skip_locked=True, of=("self",))
                 .select_related("created_by", "org")
                 .filter(pk=batch_id, status=ReplayBatch.Status.RUNNING).first())
        if batch is None:
            return 0, False
        ids = batch.work_ids[batch.cursor:batch.cursor + settings.AUXOT_REPLAY_CHUNK_SIZE]
        items = WorkItem.objects.select_related("workflow__org", "intake").filter(
            pk__in=[uuid.UUID(pk) for pk in ids], workflow__org_id=batch.org_id)
        found = {str(item.pk): item for item in items}
        replayed = _replayed_already(ids)
        # Each replay locks its original: in one order (by id) for every batch, so two
        # batches sharing items wait for each other instead of deadlocking.
        for pk in sorted(ids, key=uuid.UUID):
            reason = _chunk_one(batch, found.get(pk), pk in replayed, now)
            if reason is None:
                batch.replayed += 1
            else:
                batch.skipped += 1
                batch.skip_reasons[reason] = batch.skip_reasons.get(reason, 0) + 1
        _batch_advance(batch, len(ids), now)
    return len(ids), batch.status == ReplayBatch.Status.RUNNING


def _replayed_already(ids: list[str]) -> set[str]:
    rows = WorkItem.objects.filter(replay_of_id__in=[uuid.UUID(pk) for pk in ids])
    return {str(pk) for pk in rows.values_list("replay_of_id", flat=True)}


def _chunk_one(batch: ReplayBatch, item: WorkItem | None, replayed: bool,
               now: datetime) -> str | None:
    """Replay one item of a batch; the reason it was skipped, or None."""
    if item is None:
        return "not found"
    if replayed:
        return "already replayed"  # a bulk replay takes forward only unhandled failures
    if batch.created_by is None:
        # Its creator's account was deleted since: nobody is left whose role allows it.
        return "not permitted"
    try:
        work_item_replay(item=item, start_over=batch.start_over, user=batch.created_by,
                         batch=batch, now=now)
    except NotReplayable as exc:
        return exc.reason
    except ApplicationError as exc:
        return {"forbidden": "not permitted", "validation_failed": "input no longer valid"
                }.get(exc.code, exc.code)
    return None


def _batch_advance(batch: ReplayBatch, count: int, now: datetime) -> None:
    batch.cursor += count
    batch.progressed_at = now
    if batch.cursor >= batch.total:
        batch.status, batch.finished_at = ReplayBatch.Status.DONE, now
        audit_record(event="replay_batch.finished", org=batch.org, obj=batch, now=now,
                     actor_label="engine", extra={"replayed": batch.replayed,
                                                  "skipped": batch.skipped,
                                                  "skip_reasons": batch.skip_reasons})
    batch.save(update_fields=["cursor", "replayed", "skipped", "skip_reasons", "status",
                              "progressed_at", "finished_at"])


def replay_batches_wake(*, now: datetime | None = None) -> int:
    """Hand stalled bulk replays (their worker died, their message was lost) to a worker."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.AUXOT_REPLAY_STALL_SECONDS)
    due = ReplayBatch.objects.filter(status=ReplayBatch.Status.RUNNING, progressed_at__lt=stale,
                                     enqueued_at__lt=stale)
    ids = list(due.values_list("pk", flat=True)[:20])
    if ids:
        ReplayBatch.objects.filter(pk__in=ids).update(enqueued_at=now)
    for batch_id in ids:
        replay_batch_enqueue(batch_id=batch_id)
    return len(ids)


def on_tick(sender, now: datetime, **kwargs) -> None:
    replay_batches_wake(now=now)
