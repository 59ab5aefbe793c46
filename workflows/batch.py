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

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery, Sum, TextField
from django.db.models.functions import Cast, Length
from django.utils import timezone

from auxot.logs import log_context
from auxot.services import audit_records
from workflows.engine import (
    Claim,
    _attempt,
    _fail,
    _finish,
    _lease,
    _Run,
    _safely,
    _store_outcome,
    work_item_claim,
)
from workflows.kinds import REGISTRY, Complete, StepContext, Wait, kind_get
from workflows.models import (
    MAX_STEPS_PER_WORKFLOW,
    TASK_MARGIN_SECONDS,
    Step,
    StepRun,
    WorkItem,
    step_timeout_max,
)
from workflows.providers import provider_tickets_drop
from workflows.services import work_item_finish_observe
from workflows.signals import work_item_finished, work_items_finished
from workflows.wake import drain_request, work_items_due, work_wake_notify

# Kinds with no outside effects: a batch runs them back to back and commits them together.
PURE_KINDS = frozenset(name for name, kind in REGISTRY.items() if kind.pure)

logger = logging.getLogger(__name__)
Status = WorkItem.Status
# A batch whose items turn out slow (http, agent) hands its unstarted items back after this
# long, so an idle worker takes them instead of them waiting behind one busy worker.
HOLD_SECONDS = 1.0


class _TaskClock:
    __slots__ = ("spent", "started")

    def __init__(self) -> None:
        self.started, self.spent = time.monotonic(), False


# The running django-q2 task's clock, or None outside a task.
_task: ContextVar[_TaskClock | None] = ContextVar("auxot_task_clock", default=None)


@contextlib.contextmanager
def task_clock() -> Iterator[None]:
    """Time a django-q2 task from here: no step starts unless it can end in the task's time.

    django-q2 kills a task after AUXOT_TASK_TIMEOUT_SECONDS. A step's timeout fits one task
    (`step_timeout_max`), but a task also runs an item's later steps and other items: two
    200 s `http` steps back to back would be killed in the second, which would then count a
    crashed attempt and send its request again. `_fits` hands such an item back instead,
    and the task stops claiming.
    """
    token = _task.set(_TaskClock())
    try:
        yield
    finally:
        _task.reset(token)


def _fits(step: Step) -> bool:
    """Can an attempt at `step` started now end before this task's time runs out?

    A step may start up to TASK_MARGIN_SECONDS later than its timeout alone would allow:
    even one with the longest timeout (`step_timeout_max`) fits a task in its first
    seconds, so every item makes progress, and it still ends the lease's grace before
    django-q2's kill."""
    clock = _task.get()
    if clock is None:
        return True
    if time.monotonic() + step.timeout <= clock.started + step_timeout_max() + TASK_MARGIN_SECONDS:
        return True
    clock.spent = True
    return False


def _task_spent() -> bool:
    clock = _task.get()
    return clock is not None and clock.spent


# --- Claims ------------------------------------------------------------------------------
# Fair claiming: a claim takes each organization's oldest due item first (rank 1 of every
# org that has due work), then each one's second, and so on; orgs of the same rank in turn
# from after the org this process served last (`_ring_cursor`), so with more orgs due than
# fit one claim the next claim goes on where this one stopped. An org with one due item is
# served in the first claim after it comes due, however many items another org has due.
# Within an org: oldest (next_run_at) first.
#
# PostgreSQL bounds the work by the claim's size, not the backlog: the orgs with scheduled
# items are found by a skip scan of workitem_org_due (one index probe per org, read lazily
# from the cursor until `limit` orgs with due work are found), and each of those orgs'
# oldest due items by one range scan of the same index, FOR UPDATE SKIP LOCKED, at most
# limit - orgs + 1 of them (so the claim still fills: one org alone gets all `limit`).
# The org is matched as a range and ordered by (org_id, next_run_at) on purpose: with
# `org_id = ...` the planner drops org_id from the order, may take workitem_due (next_run_at
# order, org filtered) and then walks a big org's backlog to find a small org's item
# (50,000 rows, 27 ms per claim in bench/claim_explain.py); this form only
# workitem_org_due serves in order.
_CLAIM_PG = """
WITH RECURSIVE after_(org) AS (
    SELECT (SELECT org_id FROM {t} WHERE next_run_at IS NOT NULL AND org_id > %(cursor)s
            ORDER BY org_id LIMIT 1)
    UNION ALL
    SELECT (SELECT org_id FROM {t} WHERE next_run_at IS NOT NULL AND org_id > a.org
            ORDER BY org_id LIMIT 1) FROM after_ a WHERE a.org IS NOT NULL
), upto(org) AS (
    SELECT (SELECT org_id FROM {t} WHERE next_run_at IS NOT NULL AND org_id <= %(cursor)s
            ORDER BY org_id LIMIT 1)
    UNION ALL
    SELECT (SELECT org_id FROM {t} WHERE next_run_at IS NOT NULL AND org_id > u.org
            AND org_id <= %(cursor)s ORDER BY org_id LIMIT 1) FROM upto u WHERE u.org IS NOT NULL
), ring(org, lap) AS (
    SELECT org, 0 FROM after_ WHERE org IS NOT NULL
    UNION ALL
    SELECT org, 1 FROM upto WHERE org IS NOT NULL
), due AS (
    SELECT org, lap FROM ring WHERE EXISTS (
        SELECT 1 FROM {t} WHERE org_id = ring.org AND next_run_at <= %(now)s)
    LIMIT %(limit)s
), share(n) AS (
    SELECT %(limit)s - count(*) + 1 FROM due
), picked AS (
    SELECT c.id, c.next_run_at, due.org, due.lap FROM due CROSS JOIN LATERAL (
        SELECT id, next_run_at FROM {t}
        WHERE org_id >= due.org AND org_id <= due.org AND next_run_at <= %(now)s
        ORDER BY org_id, next_run_at LIMIT (SELECT n FROM share) FOR UPDATE SKIP LOCKED) c
)
UPDATE {t} SET lease_token = %(token)s, next_run_at = %(lease)s, status = %(status)s,
    started_at = COALESCE(started_at, %(now)s)
WHERE next_run_at <= %(now)s AND id IN (
    SELECT id FROM (SELECT id, org, lap, next_run_at, row_number() OVER (
                        PARTITION BY org ORDER BY next_run_at) AS r FROM picked) p
    ORDER BY r, lap, org, next_run_at LIMIT %(limit)s)
RETURNING id, org_id
"""
# SQLite runs one writer at a time, so its UPDATE is the guard; it ranks every due item
# (no LATERAL there): the same order as above, at a cost that grows with the backlog.
_CLAIM_SQLITE = """
UPDATE {t} SET lease_token = %s, next_run_at = %s, status = %s,
    started_at = COALESCE(started_at, %s)
WHERE next_run_at <= %s AND id IN (
    SELECT id FROM (SELECT id, org_id, next_run_at, row_number() OVER (
                        PARTITION BY org_id ORDER BY next_run_at) AS r
                    FROM {t} WHERE next_run_at <= %s) p
    ORDER BY r, org_id <= %s, org_id, next_run_at LIMIT %s)
RETURNING id, org_id
"""
# The org this process's last claim served last in ring order: the next claim starts after it.
_ring_cursor = 0


def _ring_next(cursor: int, orgs: set[int]) -> int:
    """The org served last in ring order (after `cursor`, then wrapping round)."""
    return max(orgs, key=lambda org: (org <= cursor, org))


def work_items_claim_batch(*, now: datetime, limit: int) -> list[Claim]:
    """Take up to `limit` due items in one statement, shared fairly among the orgs that
    have due work (see above); each is ours until its lease ends."""
    global _ring_cursor
    token = uuid.uuid4().hex
    table = connection.ops.quote_name(WorkItem._meta.db_table)
    at = connection.ops.adapt_datetimefield_value
    cursor_org = _ring_cursor
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_CLAIM_PG.format(t=table), {
                "token": token, "lease": at(_lease(None, now)),
                "status": Status.RUNNING.value, "now": at(now), "limit": limit,
                "cursor": cursor_org})
        else:
            cursor.execute(_CLAIM_SQLITE.format(t=table), [
                token, at(_lease(None, now)), Status.RUNNING.value, at(now), at(now), at(now),
                cursor_org, limit])
        rows = cursor.fetchall()
    if not rows:
        return []
    _ring_cursor = _ring_next(cursor_org, {row[1] for row in rows})
    ids = [row[0] for row in rows]
    # workflow__org: the finish audits with the org, without a query per item. The size of
    # each item's step outputs as stored (`_claims_by_output_size`), in the same query.
    stored = StepRun.objects.filter(work_item=OuterRef("pk")).order_by().values(
        "work_item").annotate(chars=Sum(Length(Cast("output", TextField())))).values("chars")
    items = WorkItem.objects.select_related("workflow__org").filter(pk__in=ids).annotate(
        outputs_stored_chars=Subquery(stored))
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


def _claims_by_output_size(claims: list[Claim]) -> list[list[Claim]]:
    """The claims in groups, in order, whose step outputs together fit in
    AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS (an item past it alone): a group's outputs are loaded
    and dropped together, so 32 items of 32 MiB each never sit in one worker at once."""
    if len(claims) < 2:
        return [claims] if claims else []
    budget = settings.AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS
    groups: list[list[Claim]] = []
    held = 0
    for claim in claims:
        size = getattr(claim.item, "outputs_stored_chars", 0) or 0
        if not groups or (groups[-1] and held + size > budget):
            groups.append([])
            held = 0
        groups[-1].append(claim)
        held += size
    return groups


def claims_run(claims: list[Claim], *, deadline: float | None = None) -> int:
    """Run claimed items, a group of them at a time (`_claims_by_output_size`): in each,
    pure first steps of all of them together, then the rest one after the other. Returns
    how many items were advanced."""
    started = time.monotonic()
    groups = _claims_by_output_size(claims)
    advanced = 0
    for number, group in enumerate(groups):
        rest = [claim for later in groups[number + 1:] for claim in later]
        clock = time.monotonic()
        if number and (clock - started >= HOLD_SECONDS or (deadline and clock >= deadline)):
            _release([_Run(claim, [], []) for claim in group + rest])
            return advanced
        done, whole = _group_run(group, rest, started=started, deadline=deadline)
        advanced += done
        if not whole:
            return advanced
    return advanced


def _group_run(claims: list[Claim], rest: list[Claim], *, started: float,
               deadline: float | None) -> tuple[int, bool]:
    """One group of `claims_run`: (items advanced, whether all were; if not, the unstarted
    ones and `rest` were handed back)."""
    loaded = _runs_load(claims)
    runs = [run for run in loaded if not _too_many_steps(run)]
    pure = [run for run in runs if _starts_pure(run)]
    going_on = _pure_batch(pure) if pure else []
    queue = going_on + [run for run in runs if run not in pure]
    later = [_Run(claim, [], []) for claim in rest]  # not loaded: only handed back
    for index, run in enumerate(queue):
        clock = time.monotonic()
        if index and (clock - started >= HOLD_SECONDS or (deadline and clock >= deadline)):
            _release(queue[index:] + later)
            return len(loaded) - len(queue) + index, False
        try:
            item_run(run)
        except Exception:
            # This item's lease brings it back later; the others need not wait for it.
            if queue[index + 1:] + later:
                _release(queue[index + 1:] + later)
            raise
    return len(loaded), True


def _too_many_steps(run: _Run) -> bool:
    """A workflow saved with more steps than MAX_STEPS_PER_WORKFLOW (before that was refused)
    fails its items, naming the limit, instead of running them."""
    if len(run.steps) <= MAX_STEPS_PER_WORKFLOW:
        return False
    step = run.steps[min(run.item.current_step, len(run.steps) - 1)]
    _fail(run, step, "bad_config", f"The workflow has {len(run.steps)} steps; at most "
                                   f"{MAX_STEPS_PER_WORKFLOW} run. Remove steps (or split the "
                                   "workflow) and replay the item.")
    return True


def work_item_process(*, work_id, drain_seconds: float | None = None) -> int:
    """Run this item if it is due, then drain other due items for a while.

    Returns how many items this call advanced. Safe to run twice for the same id.
    """
    budget = settings.AUXOT_DRAIN_SECONDS if drain_seconds is None else drain_seconds
    claim = work_item_claim(work_id=work_id, now=timezone.now())
    advanced = claims_run([claim]) if claim is not None else 0
    if budget > 0 and not _task_spent():  # an item handed back woke a fresh task already
        advanced += work_drain(budget=budget)
    return advanced


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
        if time.monotonic() >= deadline or _task_spent():
            break
    # Out of time with work left: hand over to a fresh message instead of hogging the worker.
    if work_items_due(now=timezone.now()):
        drain_request()
    return advanced


# --- Running one item --------------------------------------------------------------------
def item_run(run: _Run) -> None:
    """Advance a claimed item as far as it goes now (its ids in every log line)."""
    item = run.item
    with log_context(work_id=str(item.pk), intake_id=item.intake_id and str(item.intake_id),
                     request_id=item.request_id):
        _item_advance(run)


def _item_advance(run: _Run) -> None:
    started = time.monotonic()
    while run.item.current_step < len(run.steps):
        step = run.steps[run.item.current_step]
        latest = run.latest.get(step.pk)
        if latest is not None and latest.status == StepRun.Status.CARRIED:
            # A replay's step that completed in the original, after one added since: passed.
            if run.guarded().update(current_step=run.item.current_step + 1) != 1:
                return
            run.item.current_step += 1
            continue
        if step.kind in PURE_KINDS and latest is None:
            if time.monotonic() - started >= HOLD_SECONDS:
                # Fifty transforms of a second's work each would hold this worker (and
                # every item behind it) for a minute: hand it back, due at once, in turn.
                _release([run])
                return
            if not _pure_run(run):
                return
            continue
        if not _fits(step):
            # Hand it back before its attempt row: a fresh task runs it, nothing is repeated.
            logger.info("work item %s handed back: step %s (%ss) would outlast this task",
                        run.item.pk, step.position, step.timeout)
            _release([run])
            return
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
        max_attempts=step.attempts,
        timeout_seconds=step.timeout,
        work_id=run.item.pk, org_id=run.item.workflow.org_id)


def _starts_pure(run: _Run) -> bool:
    index = run.item.current_step
    if index >= len(run.steps):
        return False
    step = run.steps[index]
    return step.kind in PURE_KINDS and step.pk not in run.latest


def _pure_run(run: _Run) -> bool:
    """One item's pure steps (after a step with outside effects): see _pure_batch."""
    return bool(_pure_batch([run]))


def _pure_batch(runs: list[_Run]) -> list[_Run]:
    """Run each item's consecutive fresh pure steps, then commit every result at once.

    The attempt rows of the first steps are committed before anything runs, so a worker
    that dies here leaves each of these items one attempt to count as crashed; its next
    claim runs it through the per-step path, alone. Returns the items that go on to a
    step with outside effects.
    """
    now = timezone.now()
    runs, firsts = _attempts_open(runs, now)
    if not runs:
        return []
    # An expression may take a second or two of CPU (its budget, workflows/kinds/_shared.py):
    # past HOLD_SECONDS no item starts its chain and no chain goes on to its next step.
    deadline = time.monotonic() + HOLD_SECONDS
    executed, unstarted = [], []
    for run in runs:
        if executed and time.monotonic() >= deadline:
            unstarted.append(run)
        else:
            executed.append((run, *_pure_execute(run, now, deadline)))
    with transaction.atomic():
        held = set(WorkItem.objects.select_for_update().filter(
            pk__in=[run.item.pk for run in runs], lease_token=runs[0].token,
        ).values_list("pk", flat=True))
        for run in runs:
            if run.token != runs[0].token:
                held.discard(run.item.pk)
        if unstarted:
            _unstarted_release(unstarted, firsts, held)
        done_at = timezone.now()
        finished = _pure_commit(executed, held, done_at)
        _ledger_write(executed, firsts, held, done_at)
    for item in finished:
        work_item_finish_observe(item=item, status=Status.COMPLETED, now=done_at)
    going_on = []
    for run, results, index in executed:
        if run.item.pk in held:
            run.item.current_step = index
            if isinstance(results[-1][1], Complete) and index < len(run.steps):
                going_on.append(run)
    return going_on


def _unstarted_release(runs: list[_Run], firsts: dict[Any, StepRun], held: set) -> None:
    """Items of a batch whose first step never started: their opened attempt rows go (no
    attempt was made) and the items are handed back, due at once. Only the items this
    worker still holds (`held`: locked by the caller's transaction): one whose lease ran out
    and that another worker took over has its row counted (crashed) or built on by that
    worker, and it is that worker's item now; this one touches neither."""
    rows = [firsts.pop(run.item.pk) for run in runs]
    StepRun.objects.filter(pk__in=[row.pk for row in rows if row.work_item_id in held]).delete()
    for run, row in zip(runs, rows, strict=True):
        run.latest.pop(row.step_id, None)
        held.discard(run.item.pk)
    _release(runs)


def _attempts_open(runs: list[_Run], now: datetime) -> tuple[list[_Run], dict[Any, StepRun]]:
    """Open attempt 1 of each item's first pure step, for the items this worker still holds;
    returns those items and their attempt rows.

    The lease check and the insert are one transaction on the items' rows. A worker stalled
    past its lease (before its batch's first step, or at a pure step after a step run
    alone) while another worker claimed its items opens nothing for them: they are dropped
    here, unstarted, their result never made. Otherwise both would insert attempt 1 of the
    same step, and the unique (item, step, attempt) would fail the second insert's whole
    batch. A claim that comes after this commit sees the row (and counts it crashed if this
    worker dies)."""
    with transaction.atomic():
        held = set(WorkItem.objects.select_for_update().filter(
            pk__in=[run.item.pk for run in runs]).values_list("pk", "lease_token"))
        runs = [run for run in runs if (run.item.pk, run.token) in held]
        rows = [StepRun(work_item=run.item, step=run.steps[run.item.current_step], attempt=1,
                        status=StepRun.Status.RUNNING, started_at=now, state={})
                for run in runs]
        if rows:
            StepRun.objects.bulk_create(rows)
    for run, row in zip(runs, rows, strict=True):
        run.latest[row.step_id] = row
    return runs, {row.work_item_id: row for row in rows}


def _pure_execute(run: _Run, now: datetime, deadline: float) -> tuple[list, int]:
    """The outcomes of the item's consecutive fresh pure steps, in memory: the first, then
    the next ones until `deadline`."""
    results, start = [], run.item.current_step
    run.ended = []
    index = start
    while index < len(run.steps) and run.steps[index].kind in PURE_KINDS and (
            index == start or (run.steps[index].pk not in run.latest
                               and time.monotonic() < deadline)):
        step = run.steps[index]
        outcome = _safely(kind_get(step.kind).execute, _context(run, step, index, now),
                          run, step)
        results.append((step, outcome))
        run.ended.append(timezone.now())  # the next step starts then, not with the first
        if not isinstance(outcome, Complete):
            break
        run.outputs[step.pk] = outcome.output  # _context of the next step reads it
        index += 1
    return results, index


_DONE = ["status", "output", "error", "finished_at", "next_run_at", "lease_token",
         "waiting_on", "waiting_since", "waiting_detail", "current_step"]
_ADVANCED = ["current_step", "waiting_on", "waiting_since", "waiting_detail"]
_WAITING = ["current_step", "next_run_at", "lease_token", "waiting_on", "waiting_since",
            "waiting_detail"]


def _pure_commit(executed: list, held: set, now: datetime) -> list[WorkItem]:
    """Each held item's next state; the rows are locked by the caller's transaction.
    Returns the items it finished."""
    groups: dict[str, list[WorkItem]] = {"done": [], "advanced": [], "waiting": []}
    finished, audits = [], []
    for run, results, index in executed:
        if run.item.pk not in held:
            continue
        step, outcome = results[-1]
        item = run.item
        if isinstance(outcome, Complete) and index == len(run.steps):
            _set(item, status=Status.COMPLETED, output=outcome.output, error=None,
                 finished_at=now, next_run_at=None, lease_token="", waiting_on="",
                 waiting_since=None, waiting_detail={}, current_step=index)
            groups["done"].append(item)
            finished.append(item)
            audits.append({"event": "work_item.completed", "org": item.workflow.org,
                           "obj": item, "now": now, "actor_label": "engine"})
            if any(REGISTRY[s.kind].uses_providers for s in run.steps if s.kind in REGISTRY):
                provider_tickets_drop(work_id=item.pk)
        elif isinstance(outcome, Complete):
            _set(item, current_step=index, waiting_on="", waiting_since=None,
                 waiting_detail={})
            groups["advanced"].append(item)
        elif isinstance(outcome, Wait):
            _set(item, current_step=index, next_run_at=outcome.until, lease_token="",
                 waiting_on=outcome.waiting_on, waiting_detail=outcome.detail,
                 waiting_since=item.waiting_since or now)
            groups["waiting"].append(item)
        else:
            item.current_step = index
            run.guarded().update(current_step=index)
            if not _fail(run, step, outcome.code, outcome.message, extra=outcome.extra):
                held.discard(item.pk)
    for name, fields in (("done", _DONE), ("advanced", _ADVANCED), ("waiting", _WAITING)):
        if groups[name]:
            _rows_update(WorkItem, groups[name], fields)
    if audits:
        audit_records(rows=audits)
    if finished:
        # The rows were just written with these values: announce them without a read.
        transaction.on_commit(lambda: _announce_all(finished))
    return finished


def _rows_update(model, objs: list, names: list[str]) -> None:
    """UPDATE each row with its own values in one executemany: psycopg pipelines it into a
    single round trip (QuerySet.bulk_update's CASE expressions cost ~20 ms of Python per
    32 rows). Only for rows this transaction holds locked."""
    qn = connection.ops.quote_name
    fields = [model._meta.get_field(name) for name in names]
    pk = model._meta.pk
    sql = (f"UPDATE {qn(model._meta.db_table)} SET "  # noqa: S608  (names from _meta)
           + ", ".join(f"{qn(field.column)} = %s" for field in fields)
           + f" WHERE {qn(pk.column)} = %s")
    rows = [[field.get_db_prep_save(getattr(obj, field.attname), connection)
             for field in fields] + [pk.get_db_prep_value(obj.pk, connection)] for obj in objs]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _set(item: WorkItem, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(item, name, value)


def _announce_all(items: list[WorkItem]) -> None:
    work_items_finished.send_robust(sender=WorkItem, work_items=items)
    for item in items:
        work_item_finished.send(sender=WorkItem, work_item=item)


def _ledger_write(executed: list, firsts: dict, held: set, now: datetime) -> None:
    """One attempt row per step that ran: the first ones exist already, the others are new."""
    created = []
    for run, results, _ in executed:
        first = firsts[run.item.pk]
        if run.item.pk not in held:
            # Another worker may own the item now: record only the attempt we opened.
            results = results[:1]
        for number, (step, outcome) in enumerate(results):
            row = first if number == 0 else StepRun(
                work_item=run.item, step=step, attempt=1, started_at=run.ended[number - 1],
                state={})
            _outcome_set(row, outcome, run.item.pk in held, now)
            if row.finished_at is not None:  # each step's own end; the item's is the commit's
                row.finished_at = run.ended[number]
            if number:
                created.append(row)
            run.latest[step.pk] = row
    mine = [row for key, row in firsts.items() if key in held]
    if mine:
        _rows_update(StepRun, mine, ["status", "finished_at", "output", "state", "error"])
    lost = [row.pk for key, row in firsts.items() if key not in held]
    if lost:
        # Items taken over (or canceled) meanwhile: our open rows are marked discarded only
        # if nobody marked them since (the new holder counts a running one crashed and
        # builds on it; a cancel closes them): never overwrite the newer holder's word.
        StepRun.objects.filter(pk__in=lost, status=StepRun.Status.RUNNING).update(
            status=StepRun.Status.DISCARDED, finished_at=now)
    if created:
        StepRun.objects.bulk_create(created)


def _outcome_set(row: StepRun, outcome, held: bool, now: datetime) -> None:
    row.finished_at = now
    if not held:
        # Canceled (or taken over) while the steps ran: their results are discarded.
        row.status = StepRun.Status.DISCARDED
    elif isinstance(outcome, Complete):
        row.status, row.output = StepRun.Status.COMPLETED, outcome.output
    elif isinstance(outcome, Wait):
        row.status, row.state, row.finished_at = StepRun.Status.WAITING, outcome.detail, None
    else:
        row.status = StepRun.Status.FAILED
        row.error = {"code": outcome.code, "message": outcome.message}
