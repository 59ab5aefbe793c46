"""The engine: claim a due work item under a lease, run its ready steps, store each outcome.

Exactly once per step: an attempt row is committed before a step starts; a step's
completion and the item's advance commit together, guarded by the lease token. A worker
that dies leaves a `running` attempt and a lease that runs out; the next claim marks
that attempt crashed and starts the next one, up to the step's max attempts.
"""

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from auxot.outbound import urls_redacted
from auxot.storable import text_storable, value_check, value_problem
from workflows.handoffs import describe, violations
from workflows.kinds import (
    Complete,
    Fail,
    Outcome,
    StepContext,
    StepKind,
    Wait,
    expression_budget,
    kind_get,
)
from workflows.kinds._shared import retries_exhausted
from workflows.kinds.base import retried_error
from workflows.metrics import step_observe
from workflows.models import Step, StepRun, WorkItem, step_timeout_max
from workflows.providers import ProviderGate
from workflows.services import work_item_finish

logger = logging.getLogger(__name__)
Status = WorkItem.Status


@dataclass
class Claim:
    item: WorkItem
    token: str


def _lease(step: Step | None, now: datetime) -> datetime:
    timeout = step.timeout if step else min(settings.AUXOT_STEP_TIMEOUT_SECONDS,
                                            step_timeout_max())
    return now + timedelta(seconds=timeout + settings.AUXOT_LEASE_GRACE_SECONDS)


def work_item_claim(*, work_id, now: datetime) -> Claim | None:
    """Take the item if it is due and nobody holds a live lease on it."""
    token = uuid.uuid4().hex
    changed = WorkItem.objects.filter(pk=work_id, next_run_at__lte=now).update(
        lease_token=token,
        next_run_at=_lease(None, now),
        status=Status.RUNNING,
        started_at=Coalesce(F("started_at"), Value(now)),
    )
    if changed != 1:
        return None
    # workflow__org: the finish audits with the org, without a query per item.
    item = WorkItem.objects.select_related("workflow__org").get(pk=work_id)
    return Claim(item=item, token=token)


class _Run:
    """One claimed item being advanced. Holds the ordered steps and the outputs so far."""

    def __init__(self, claim: Claim, steps: list[Step] | None = None,
                 runs: list[StepRun] | None = None):
        # A batch passes steps and attempts it loaded for all its items at once.
        self.item = claim.item
        self.token = claim.token
        if steps is None:
            steps = list(Step.objects.filter(workflow_id=self.item.workflow_id))
        if runs is None:
            runs = list(StepRun.objects.filter(work_item=self.item).order_by("attempt"))
        self.steps = steps
        self.latest: dict[int, StepRun] = {}
        self.outputs: dict[str, Any] = {}
        self.ended: list[datetime] = []  # when each step of a pure run ended (batch.py)
        for run in runs:
            self.latest[run.step_id] = run
            if run.status in StepRun.DONE:  # a replay's carried steps count as done
                self.outputs[run.step_id] = run.output
        # The item's step outputs together as JSON (AUXOT_ITEM_OUTPUT_MAX_CHARS).
        self.output_chars = sum(len(json.dumps(output, ensure_ascii=False,
                                               separators=(",", ":")))
                                for output in self.outputs.values())

    def data(self) -> dict[str, Any]:
        done = self.steps[: self.item.current_step]
        previous = self.outputs.get(done[-1].pk) if done else None
        return {
            "input": self.item.input,
            "previous": previous,
            "steps": {step.name: self.outputs.get(step.pk) for step in done},
        }

    def guarded(self) -> Any:
        return WorkItem.objects.filter(pk=self.item.pk, lease_token=self.token)

    def rows_held(self, row: StepRun) -> Any:
        """This attempt row, for an UPDATE that matches only while this worker holds the
        item's lease (one statement: the lease check is its subquery)."""
        return StepRun.objects.filter(pk=row.pk, work_item__lease_token=self.token)


def _attempt(run: _Run, step: Step) -> tuple[Outcome | None, StepRun | None]:
    """Start (or resume) an attempt at `step`; the attempt row is committed first."""
    now = timezone.now()
    latest = run.latest.get(step.pk)
    kind = kind_get(step.kind)
    max_attempts = step.attempts
    timeout = step.timeout
    org_id = run.item.workflow.org_id
    gate = ProviderGate(org_id=org_id, work_id=run.item.pk, now=now, lease_seconds=timeout,
                        lease_token=run.token) if kind.uses_providers else None
    ctx = StepContext(data=run.data(), config=step.config or {}, state={}, now=now,
                      step_name=step.name,
                      idempotency_key=run.item.idempotency_key(step),
                      max_attempts=max_attempts, timeout_seconds=timeout,
                      work_id=run.item.pk, org_id=org_id, providers=gate)
    if latest is not None and latest.status == StepRun.Status.WAITING:
        if run.guarded().update(next_run_at=_lease(step, now)) != 1:
            return None, None
        if latest.state.get("retry"):
            # A backoff ran out: that attempt failed with what its kind said (its code and
            # reason, kept in its waiting state); the next one starts below.
            latest.error = retried_error(latest.state, kind.retry_codes)
            run.rows_held(latest).update(
                status=StepRun.Status.FAILED, finished_at=now, error=latest.error)
            latest.status = StepRun.Status.FAILED
        else:
            # Running again: a worker that dies during the resume is counted as a crash.
            if run.rows_held(latest).update(status=StepRun.Status.RUNNING) != 1:
                return None, None  # taken over since the lease was renewed above
            ctx.state, ctx.attempt = latest.state, latest.attempt
            return _safely(kind.resume, ctx, run, step), latest
    carried: dict = {}
    if latest is not None and latest.status == StepRun.Status.RUNNING:
        # Its worker died (the lease ran out): count the attempt as crashed (while this
        # worker holds the item: one stalled since its claim leaves it to the newer holder).
        run.rows_held(latest).filter(status=StepRun.Status.RUNNING).update(
            status=StepRun.Status.CRASHED, finished_at=now,
            error={"code": "step_crashed", "message": "The worker stopped during this attempt."},
        )
        if kind.resumes_after_crash and latest.state:
            carried = latest.state  # it died resuming: resume again (an approval's decision)
    number = latest.attempt + 1 if latest is not None else 1
    if number > max_attempts and _was_retried(kind, latest):
        # Its attempts were lowered while it waited to retry: it gives up as its last
        # attempt would have, with that attempt's reason (not as a crash).
        failure = retries_exhausted(kind.retry_codes, latest.attempt,
                                    latest.error.get("message", ""))
        _fail(run, step, failure.code, failure.message)
        return None, None
    if number > max_attempts:
        _fail(run, step, "step_crashed",
              f"Step '{step.name}' did not finish in {max_attempts} attempts; its worker "
              "stopped each time (a crash, an out-of-memory kill or a timeout).")
        return None, None
    with transaction.atomic():
        # The lease check holds the item's row until the attempt row is in: a worker that
        # claims the item after this worker's lease ran out sees that row (and counts it
        # crashed), never inserts the same attempt number beside it.
        if run.guarded().update(next_run_at=_lease(step, now)) != 1:
            return None, None
        attempt = StepRun.objects.create(
            work_item=run.item, step=step, attempt=number, status=StepRun.Status.RUNNING,
            started_at=now, state=carried,
        )
    run.latest[step.pk] = attempt
    ctx.attempt = number
    if carried:
        ctx.state = carried
        return _safely(kind.resume, ctx, run, step), attempt
    return _safely(kind.execute, ctx, run, step), attempt


def _was_retried(kind: StepKind, latest: StepRun | None) -> bool:
    """Whether the step's latest attempt failed and was to be retried after a backoff."""
    return (latest is not None and kind.retry_codes is not None
            and latest.status == StepRun.Status.FAILED
            # "retrying": what such an attempt was stored with before it kept its own code.
            # Migration 0014 rewrites those rows; this read stays for the rows a worker of
            # the older version still writes while a rolling deploy runs both.
            and (latest.error or {}).get("code") in (kind.retry_codes.attempt, "retrying"))


def _safely(call, ctx: StepContext, run: _Run, step: Step) -> Outcome:
    started = time.monotonic()
    try:
        with expression_budget():  # the step's expressions share one budget
            outcome = call(ctx)
    except Exception as exc:  # a bug in a step kind must fail the item, not loop forever
        logger.exception("step %s of work item %s raised", step.pk, run.item.pk)
        # Every key holder polling the item reads it: a URL it quotes is shown redacted.
        outcome = Fail("step_error", urls_redacted(f"{type(exc).__name__}: {exc}"))
    else:
        outcome = _check_storable(step, _check_handoff(step, outcome), run)
    step_observe(kind=step.kind, outcome=outcome, seconds=time.monotonic() - started)
    return outcome


FAIL_MESSAGE_MAX_CHARS = 2000
FAIL_EXTRA_MAX_CHARS = 65536


def _check_storable(step: Step, outcome: Outcome, run: _Run) -> Outcome:
    """An outcome the database cannot store (NaN from `sum` over huge numbers, a transform
    that doubles its input forty times, a NUL in an error message) is made storable or fails
    this item alone, before anything is written: in a batch, one unstorable row would roll
    back every item's results with it."""
    if isinstance(outcome, Fail):
        message = text_storable(str(outcome.message))
        if len(message) > FAIL_MESSAGE_MAX_CHARS:
            message = message[:FAIL_MESSAGE_MAX_CHARS] + "… (cut)"
        extra = outcome.extra
        if extra and value_problem(extra, limit=FAIL_EXTRA_MAX_CHARS):
            extra = {}
        return Fail(outcome.code, message, extra)
    if isinstance(outcome, Wait):
        if value_problem(outcome.detail, limit=FAIL_EXTRA_MAX_CHARS) is None:
            return outcome
        return Fail("step_error", f"Step '{step.name}' asked to wait with a detail that "
                                  "cannot be stored.")
    problem, size = value_check(outcome.output, limit=settings.AUXOT_STEP_OUTPUT_MAX_CHARS)
    if problem is not None:
        return Fail("bad_output", f"Step '{step.name}' output {problem}.")
    limit = settings.AUXOT_ITEM_OUTPUT_MAX_CHARS
    if run.output_chars + size > limit:
        return Fail("bad_output", (
            f"Step '{step.name}' output ({size:,} characters as JSON) would bring the "
            f"item's step outputs together to {run.output_chars + size:,} characters, past "
            f"{limit:,} (AUXOT_ITEM_OUTPUT_MAX_CHARS)."))
    run.output_chars += size
    return outcome


def _check_handoff(step: Step, outcome: Outcome) -> Outcome:
    if not isinstance(outcome, Complete) or not step.output_schema:
        return outcome
    found = violations(outcome.output, step.output_schema)
    if not found:
        return outcome
    return Fail("bad_handoff", f"Step '{step.name}' output {describe(found)}.",
                {"pointer": found[0]["pointer"], "violations": found})


def _store_outcome(run: _Run, step: Step, attempt: StepRun, outcome: Outcome) -> bool:
    """Commit the attempt's result with the item's next state, if we still hold the lease."""
    now = timezone.now()
    with transaction.atomic():
        if isinstance(outcome, Complete):
            held = run.guarded().update(
                current_step=F("current_step") + 1, waiting_on="", waiting_since=None,
                waiting_detail={},
            ) == 1
            attempt.status, attempt.output, attempt.finished_at = "completed", outcome.output, now
        elif isinstance(outcome, Wait):
            held = run.guarded().update(
                next_run_at=outcome.until, lease_token="", waiting_on=outcome.waiting_on,
                waiting_since=Coalesce(F("waiting_since"), Value(now)),
                waiting_detail=outcome.detail,
            ) == 1
            attempt.status, attempt.state = "waiting", outcome.detail
        else:
            held = _fail(run, step, outcome.code, outcome.message,
                         extra=outcome.extra)
            attempt.status, attempt.finished_at = "failed", now
            attempt.error = {"code": outcome.code, "message": outcome.message}
        if held:
            attempt.save(update_fields=["status", "finished_at", "output", "state", "error"])
        else:
            # Canceled (or taken over) while the step ran: its result is discarded. Only if
            # the row is still as this worker left it: a worker that took the item over
            # counted it crashed (or resumes it), and its word stands.
            attempt.status, attempt.finished_at = StepRun.Status.DISCARDED, now
            StepRun.objects.filter(pk=attempt.pk, status=StepRun.Status.RUNNING).update(
                status=attempt.status, finished_at=now)
    if held and isinstance(outcome, Complete):
        run.item.current_step += 1
        run.outputs[step.pk] = outcome.output
    return held


def _fail(run: _Run, step: Step, code: str, message: str, extra: dict | None = None) -> bool:
    error = {"code": code, "message": message, "step": step.name, "step_position": step.position,
             **(extra or {})}
    return _finish(run, Status.FAILED, error=error)


def _finish(run: _Run, status: str, *, output: Any = None, error: dict | None = None) -> bool:
    """End the item, if this worker still holds its lease; audited as the engine's act."""
    return work_item_finish(
        item=run.item, status=status, now=timezone.now(), output=output, error=error,
        lease_token=run.token, steps=run.steps, event=f"work_item.{status}",
        actor_label="engine", extra={"code": error.get("code")} if error else {})
