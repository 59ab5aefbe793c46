"""Draining: how work moves from the work item table to django-q2's workers.

The work item table is the queue. The broker carries "drain" messages, never one per
item: a drain task claims up to AUXOT_DRAIN_BATCH due items in one statement (FOR UPDATE
SKIP LOCKED on PostgreSQL, a guarded UPDATE on SQLite), runs them, and claims again until
nothing is due or AUXOT_DRAIN_SECONDS have passed.

Wake-ups: whoever makes work due calls `work_wake_notify()`. On PostgreSQL that is a
NOTIFY delivered at commit, heard by each qcluster's ticker (`WakeListener`), which puts a
drain on the broker; elsewhere it requests a drain directly. `drain_request()` adds a
message only when none is waiting on the broker, so a backlog of any size holds at most
workers running + `queue_limit` prefetched + 1 waiting drain messages per cluster. The
ticker's sweep is the safety net: due work with no waiting message gets one message, once.

Pure steps (transform, delay) of one item run back to back and commit together: one
attempt row is committed first (so a crash is counted), then every result in one
transaction. Steps with outside effects keep the engine's attempt-row-before-call path.
"""

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from auxot.broker import broker_get, task_enqueue
from auxot.services import audit_record
from workflows.engine import (
    Claim,
    _attempt,
    _fail,
    _finish,
    _lease,
    _Run,
    _safely,
    _store_outcome,
)
from workflows.models import Step, StepRun, WorkItem
from workflows.providers import provider_tickets_drop
from workflows.signals import work_item_finished
from workflows.steps import Complete, StepContext, Wait, step_kind

logger = logging.getLogger(__name__)
Status = WorkItem.Status
CHANNEL = "auxot_work"
# The trigger's accept statement may fold the wake into itself (a CTE) with this.
WAKE_SQL = f"SELECT pg_notify('{CHANNEL}', '')"
DRAIN_TASK = "workflows.tasks.work_drain"
PURE_KINDS = frozenset({"transform", "delay"})
# A batch whose items turn out slow (http, agent) hands its unstarted items back after this
# long, so an idle worker takes them instead of them waiting behind one busy worker.
HOLD_SECONDS = 1.0


# --- Wake-ups ----------------------------------------------------------------------------
def work_wake_notify() -> None:
    """Tell the workers that work came due. Call it inside the transaction that made it due.

    PostgreSQL: a NOTIFY, delivered only if and when that transaction commits (one statement,
    no broker write). Other databases: a drain request (no-op when one is waiting already),
    in the same transaction as the row for the ORM broker, after commit for Redis.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(WAKE_SQL)
    elif settings.REDIS_URL:
        transaction.on_commit(drain_request)
    else:
        drain_request()


def drain_request() -> bool:
    """Put one drain message on the broker unless one is already waiting. Never raises."""
    try:
        if broker_get().queue_size() > 0:
            return False
    except Exception:
        logger.exception("could not read the broker's queue size")
        return False
    return task_enqueue(task=DRAIN_TASK, arg="drain", name="drain")


def work_items_due(*, now: datetime) -> bool:
    return WorkItem.objects.filter(next_run_at__lte=now).exists()


def work_items_wake(*, now: datetime | None = None) -> int:
    """The sweep's safety net: due work (delays, backoffs, expired leases, lost messages)
    and no drain waiting on the broker gets one drain message. Returns messages added."""
    now = now or timezone.now()
    if not work_items_due(now=now):
        return 0
    return int(drain_request())


class WakeListener:
    """The ticker's wait: on PostgreSQL it returns early when a NOTIFY arrives."""

    def __init__(self) -> None:
        self.wrapper = None

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout`; True when woken by a notification."""
        if connection.vendor != "postgresql":
            time.sleep(timeout)
            return False
        try:
            raw = self._connection()
            woke = any(True for _ in raw.notifies(timeout=timeout, stop_after=1))
            if woke:  # a burst arrives as many notifications: take them all as one wake-up
                for _ in raw.notifies(timeout=0.002):
                    pass
            return woke
        except Exception:
            logger.exception("wake listener failed; reconnecting")
            self.close()
            time.sleep(min(timeout, 1.0))
            return False

    def _connection(self):
        if self.wrapper is None:
            self.wrapper = connections.create_connection("default")
            self.wrapper.ensure_connection()
            self.wrapper.connection.execute(f"LISTEN {CHANNEL}")
        return self.wrapper.connection

    def close(self) -> None:
        if self.wrapper is not None:
            try:
                self.wrapper.close()
            except Exception:
                logger.debug("closing the wake listener failed", exc_info=True)
            self.wrapper = None


# --- Claims ------------------------------------------------------------------------------
def work_items_claim_batch(*, now: datetime, limit: int) -> list[Claim]:
    """Take up to `limit` due items in one statement; each is ours until its lease ends."""
    token = uuid.uuid4().hex
    table = connection.ops.quote_name(WorkItem._meta.db_table)
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    at = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        # SQLite runs one writer at a time, so its UPDATE is the guard. Names from _meta.
        cursor.execute(
            f"UPDATE {table} SET lease_token = %s, next_run_at = %s, status = %s, "  # noqa: S608
            f"started_at = COALESCE(started_at, %s) WHERE next_run_at <= %s AND id IN ("
            f"SELECT id FROM {table} WHERE next_run_at <= %s ORDER BY next_run_at "
            f"LIMIT %s{lock}) RETURNING id",
            [token, at(_lease(None, now)), Status.RUNNING.value, at(now), at(now), at(now),
             limit])
        ids = [row[0] for row in cursor.fetchall()]
    if not ids:
        return []
    # workflow__org: the finish audits with the org, without a query per item.
    items = WorkItem.objects.select_related("workflow__org").filter(pk__in=ids)
    return [Claim(item=item, token=token) for item in items.order_by("created_at")]


def _runs_load(claims: list[Claim]) -> list[_Run]:
    """Steps and attempts of every claimed item in two queries."""
    steps: dict[Any, list[Step]] = {}
    for step in Step.objects.filter(workflow_id__in={c.item.workflow_id for c in claims}):
        steps.setdefault(step.workflow_id, []).append(step)
    attempts: dict[Any, list[StepRun]] = {}
    ids = [c.item.pk for c in claims]
    for run in StepRun.objects.filter(work_item_id__in=ids).order_by("attempt"):
        attempts.setdefault(run.work_item_id, []).append(run)
    return [_Run(c, steps.get(c.item.workflow_id, []), attempts.get(c.item.pk, []))
            for c in claims]


def _release(runs: list[_Run]) -> None:
    """Hand claimed but unstarted items back: due at once, for any worker."""
    for token in {run.token for run in runs}:
        WorkItem.objects.filter(pk__in=[r.item.pk for r in runs if r.token == token],
                                lease_token=token).update(lease_token="",
                                                          next_run_at=timezone.now())
    work_wake_notify()


def claims_run(claims: list[Claim], *, deadline: float | None = None) -> int:
    """Run claimed items one after the other; returns how many were advanced."""
    runs = _runs_load(claims)
    started = time.monotonic()
    for index, run in enumerate(runs):
        clock = time.monotonic()
        if index and (clock - started >= HOLD_SECONDS or (deadline and clock >= deadline)):
            _release(runs[index:])
            return index
        try:
            item_run(run)
        except Exception:
            # This item's lease brings it back later; the others need not wait for it.
            if runs[index + 1:]:
                _release(runs[index + 1:])
            raise
    return len(runs)


def work_drain(*, budget: float | None = None, batch: int | None = None) -> int:
    """The drain task's body: claim and run batches until nothing is due or time is up."""
    budget = settings.AUXOT_DRAIN_SECONDS if budget is None else budget
    size = batch or settings.AUXOT_DRAIN_BATCH
    deadline = time.monotonic() + budget
    advanced = 0
    while True:
        claims = work_items_claim_batch(now=timezone.now(), limit=size)
        if not claims:
            return advanced
        advanced += claims_run(claims, deadline=deadline)
        if time.monotonic() >= deadline:
            break
    # Out of time with work left: hand over to a fresh message instead of hogging the worker.
    if work_items_due(now=timezone.now()):
        drain_request()
    return advanced


# --- Running one item --------------------------------------------------------------------
def item_run(run: _Run) -> None:
    """Advance a claimed item as far as it goes now."""
    while run.item.current_step < len(run.steps):
        step = run.steps[run.item.current_step]
        if step.kind in PURE_KINDS and step.pk not in run.latest:
            if not _pure_run(run):
                return
            continue
        outcome, attempt = _attempt(run, step)
        if attempt is None or not _store_outcome(run, step, attempt, outcome):
            return
        if not isinstance(outcome, Complete):
            return
    _finish(run, Status.COMPLETED, output=_data_at(run, len(run.steps))["previous"]
            if run.steps else run.item.input)


def _data_at(run: _Run, index: int) -> dict[str, Any]:
    done = run.steps[:index]
    return {
        "input": run.item.input,
        "previous": run.outputs.get(done[-1].pk) if done else None,
        "steps": {step.name: run.outputs.get(step.pk) for step in done},
    }


def _context(run: _Run, step: Step, index: int, now: datetime) -> StepContext:
    return StepContext(
        data=_data_at(run, index), config=step.config or {}, state={}, now=now,
        step_name=step.name, idempotency_key=f"{run.item.pk}:{step.position}",
        max_attempts=step.max_attempts or settings.AUXOT_STEP_MAX_ATTEMPTS,
        timeout_seconds=step.timeout_seconds or settings.AUXOT_STEP_TIMEOUT_SECONDS,
        work_id=run.item.pk, org_id=run.item.workflow.org_id)


def _attempt_open(run: _Run, step: Step, now: datetime) -> StepRun | None:
    """Commit the first attempt row of a pure run, only while we hold the lease."""
    table = connection.ops.quote_name(StepRun._meta.db_table)
    items = connection.ops.quote_name(WorkItem._meta.db_table)
    pk = WorkItem._meta.pk.get_db_prep_value(run.item.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(  # table names from _meta, values as parameters
            f"INSERT INTO {table} (work_item_id, step_id, attempt, status, started_at, state) "  # noqa: S608
            f"SELECT id, %s, 1, %s, %s, '{{}}' FROM {items} WHERE id = %s AND lease_token = %s "
            "RETURNING id",
            [step.pk, StepRun.Status.RUNNING.value,
             connection.ops.adapt_datetimefield_value(now), pk, run.token])
        row = cursor.fetchone()
    if row is None:
        return None
    attempt = StepRun(pk=row[0], work_item=run.item, step=step, attempt=1,
                      status=StepRun.Status.RUNNING, started_at=now, state={})
    run.latest[step.pk] = attempt
    return attempt


def _pure_run(run: _Run) -> bool:
    """Run consecutive fresh pure steps and commit them together. True: go on with the
    item (its next step has outside effects or an earlier attempt); False: stop here."""
    now = timezone.now()
    start = run.item.current_step
    first = _attempt_open(run, run.steps[start], now)
    if first is None:
        return False
    results, index, outputs = [], start, dict(run.outputs)
    while index < len(run.steps) and run.steps[index].kind in PURE_KINDS and (
            index == start or run.steps[index].pk not in run.latest):
        step = run.steps[index]
        outcome = _safely(step_kind(step.kind).execute, _context(run, step, index, now),
                          run, step)
        results.append((step, outcome))
        if not isinstance(outcome, Complete):
            break
        run.outputs[step.pk] = outcome.output  # _context of the next step reads it
        index += 1
    with transaction.atomic():
        held = _pure_commit(run, results, index)
        _ledger_write(run, results, first, held, timezone.now())
    if not held:
        run.outputs = outputs
        return False
    run.item.current_step = index
    last = results[-1][1]
    return isinstance(last, Complete) and index < len(run.steps)


def _pure_commit(run: _Run, results: list, index: int) -> bool:
    """The item's next state after a pure run, guarded by the lease. Call in a transaction."""
    step, outcome = results[-1]
    if isinstance(outcome, Complete) and index == len(run.steps):
        return _complete(run, outcome.output, index)
    if isinstance(outcome, Complete):
        return run.guarded().update(current_step=index, waiting_on="", waiting_since=None,
                                    waiting_detail={}) == 1
    if isinstance(outcome, Wait):
        return run.guarded().update(
            current_step=index, next_run_at=outcome.until, lease_token="",
            waiting_on=outcome.waiting_on, waiting_detail=outcome.detail,
            waiting_since=Coalesce(F("waiting_since"), Value(timezone.now()))) == 1
    if run.guarded().update(current_step=index) != 1:
        return False
    return _fail(run, step, outcome.code, outcome.message, extra=outcome.extra)


def _complete(run: _Run, output: Any, index: int) -> bool:
    now = timezone.now()
    fields = {"status": Status.COMPLETED, "output": output, "error": None, "finished_at": now,
              "next_run_at": None, "lease_token": "", "waiting_on": "", "waiting_since": None,
              "waiting_detail": {}, "current_step": index}
    if run.guarded().update(**fields) != 1:
        return False
    if any(step.kind == "agent" for step in run.steps):
        provider_tickets_drop(work_id=run.item.pk)
    audit_record(event="work_item.completed", org=run.item.workflow.org, obj=run.item, now=now,
                 actor_label="engine")
    item = run.item
    for name, value in fields.items():
        setattr(item, name, value)
    # The row was just written with these values: announce it without reading it back.
    transaction.on_commit(lambda: work_item_finished.send(sender=WorkItem, work_item=item))
    return True


def _ledger_write(run: _Run, results: list, first: StepRun, held: bool, now: datetime) -> None:
    """One attempt row per step that ran: the first one exists already, the others are new."""
    rows = []
    for number, (step, outcome) in enumerate(results):
        row = first if number == 0 else StepRun(work_item=run.item, step=step, attempt=1,
                                                 started_at=first.started_at, state={})
        row.finished_at = now
        if not held:
            row.status = StepRun.Status.DISCARDED
        elif isinstance(outcome, Complete):
            row.status, row.output = StepRun.Status.COMPLETED, outcome.output
        elif isinstance(outcome, Wait):
            row.status, row.state, row.finished_at = StepRun.Status.WAITING, outcome.detail, None
        else:
            row.status = StepRun.Status.FAILED
            row.error = {"code": outcome.code, "message": outcome.message}
        rows.append(row)
        run.latest[step.pk] = row
    first.save(update_fields=["status", "finished_at", "output", "state", "error"])
    if rows[1:]:
        StepRun.objects.bulk_create(rows[1:])
