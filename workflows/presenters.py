"""What a caller sees of a work item: the poll body (and, later, the callback body).

`work_item_view` loads the item's step progress in one query (the workflow's steps, each
LEFT JOINed to this item's attempts) and explains a non-terminal item: what it waits on,
since when, and the first thing to check. What the diagnosis needs beyond the item (the
last worker heartbeat, a provider's queue) comes from a per-process cache a couple of
seconds old, not a query per poll.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from auxot.timefmt import iso
from auxot.ttlcache import TtlCache
from workflows.handoffs import describe
from workflows.kinds import UnknownKind, kind_get
from workflows.kinds.base import retried_error
from workflows.lookup import step_progress
from workflows.models import Step, StepRun, WorkItem
from workflows.providers import PROVIDER_AHEAD_SHOWN_MAX, provider_position
from workflows.services import (
    HEARTBEAT_CACHE_SECONDS,
    worker_last_seen_cache_clear,
    worker_last_seen_cached,
)


def heartbeat_stale() -> timedelta:
    """How old the last worker heartbeat may be before the poll says no worker runs: three
    missed beats (15 s at the default AUXOT_HEARTBEAT_SECONDS of 5), at least 10 s."""
    return timedelta(seconds=max(10, 3 * settings.AUXOT_HEARTBEAT_SECONDS))


@dataclass
class WorkItemView:
    body: dict[str, Any]
    retry_after: int | None  # seconds; None once terminal
    state: str = ""  # `Auxot-State` (poll_state): what the body shows, as one token


def _backing_off(item: WorkItem, last: StepRun | None) -> bool:
    """Its last attempt failed and waits out a backoff before the next one (the wait's
    detail is the item's: the poll does not load a waiting attempt's state)."""
    return (last is not None and not item.is_terminal and last.status == StepRun.Status.WAITING
            and item.waiting_on == WorkItem.Waiting.BACKOFF
            and bool((item.waiting_detail or {}).get("retry")))


def _step_status(item: WorkItem, last: StepRun | None) -> str:
    if last is None:
        return "skipped" if item.is_terminal else "pending"
    if last.status == StepRun.Status.CRASHED and not item.is_terminal:
        return "retrying"  # its worker died; the next attempt is due
    if _backing_off(item, last):
        return "retrying"  # it failed; the next attempt is due after the backoff
    return last.status


def _retrying(item: WorkItem, step: Step, last: StepRun) -> dict:
    """A `retrying` row's next attempt (its number, when due) and the last one's error."""
    if last.status == StepRun.Status.CRASHED:
        return {"next_attempt": last.attempt + 1, "next_attempt_at": iso(item.next_run_at)}
    state = item.waiting_detail or {}
    try:
        codes = kind_get(step.kind).retry_codes
    except UnknownKind:
        codes = None
    return {"next_attempt": last.attempt + 1, "next_attempt_at": state.get("until"),
            "error": retried_error(state, codes)}


def _step_rows(item: WorkItem, steps: list[Step], runs: list[StepRun]) -> list[dict]:
    by_step: dict[int, list[StepRun]] = {}
    for run in runs:
        by_step.setdefault(run.step_id, []).append(run)
    rows = []
    for step in steps:
        attempts = by_step.get(step.pk, [])
        last = attempts[-1] if attempts else None
        row = {
            "position": step.position,
            "name": step.name,
            "kind": step.kind,
            "status": _step_status(item, last),
            "attempts": len(attempts),
            "started_at": iso(attempts[0].started_at) if attempts else None,
            "finished_at": iso(last.finished_at) if last else None,
            "error": last.error if last else None,
        }
        if row["status"] == "retrying":
            row.update(_retrying(item, step, last))
        if last is not None and last.status == StepRun.Status.CARRIED:
            # A replay's step that ran in an earlier item: where its output comes from.
            row["attempts"] = 0
            row["carried_from"] = dict((last.state or {}).get("carried_from") or {})
        rows.append(row)
    return rows


def _replayed_by(item: WorkItem) -> list[str]:
    if item.status != WorkItem.Status.FAILED:
        return []  # only failed items are replayed: no query on the hot path
    return [str(pk) for pk in WorkItem.objects.filter(replay_of_id=item.pk)
            .order_by("created_at").values_list("pk", flat=True)]


def _explain(item: WorkItem, steps: list[Step], now: datetime) -> tuple[dict | None, str]:
    """Return (waiting_on, diagnosis): for each phase of a non-terminal item (`_phase`),
    what it waits on and the first thing to check."""
    step = steps[item.current_step] if item.current_step < len(steps) else None
    where = f"step {step.position} '{step.name}'" if step else "the final step"
    if item.status == WorkItem.Status.COMPLETED:
        return None, "Completed."
    if item.status == WorkItem.Status.FAILED:
        error = item.error or {}
        at = f" at step '{error['step']}'" if error.get("step") else ""
        if error.get("code") == "bad_handoff":
            found = error.get("violations") or []
            what = describe(found) if found else "invalid"
            return None, f"Failed{at}: output {what} (bad handoff)."
        return None, f"Failed{at}: {error.get('message', 'no message')} ({error.get('code')})."
    phase = _phase(item, now)
    if phase == "run":
        return None, f"Running {where}."
    if phase == "lost":
        return _lost(item, where, now)
    if phase in ("queue", "worker"):
        if item.waiting_on == WorkItem.Waiting.APPROVAL and (
                item.waiting_detail or {}).get("decision"):
            return _wait_approval(item, step, where, now)  # decided: says so, and who runs it
        return _due(item, step, where, phase, now)
    if item.waiting_on in _WAITS:
        return _WAITS[item.waiting_on](item, step, where, now)
    if item.waiting_on == WorkItem.Waiting.DELAY:
        until = (item.waiting_detail or {}).get("until", "")
        waiting = {"kind": "delay", "since": iso(item.waiting_since), "until": until,
                   "step": step.name if step else None}
        return waiting, f"Waiting at {where} (a delay) until {until}; nothing to do."
    if item.waiting_on:
        waiting = {"kind": item.waiting_on, "since": iso(item.waiting_since),
                   **(item.waiting_detail or {})}
        return waiting, f"Waiting on {item.waiting_on} at {where} since {iso(item.waiting_since)}."
    # Not due yet and waiting on nothing named: it is scheduled, or (no run time) stuck.
    waiting = {"kind": "queue", "since": iso(item.created_at), "until": iso(item.next_run_at)}
    if item.next_run_at is None:
        return waiting, (f"Not scheduled: nothing will run {where} (the item has no next run "
                         "time); cancel it and replay the work, or ask an operator.")
    return waiting, f"Scheduled: a worker takes {where} at {iso(item.next_run_at)}."


def _worker_fresh(now: datetime) -> tuple[bool, datetime | None]:
    last_beat = worker_last_seen_cached()
    return last_beat is not None and now - last_beat <= heartbeat_stale(), last_beat


def _phase(item: WorkItem, now: datetime) -> str:
    """Where a non-terminal item is, beyond what it waits on: `run` (a worker holds its
    lease), `lost` (a lease is held but no worker has beaten lately: its worker may have
    stopped), `queue` (due, a worker is running to claim it), `worker` (due, no worker
    heartbeat), `wait` (not due: it waits on its `waiting_on`, or is scheduled). Terminal:
    `done`. Time alone moves an item from `run`/`wait` to due: no row is written for it."""
    if item.is_terminal:
        return "done"
    if item.lease_token and item.next_run_at and item.next_run_at > now:
        return "run" if _worker_fresh(now)[0] else "lost"
    if item.next_run_at is not None and item.next_run_at <= now:
        return "queue" if _worker_fresh(now)[0] else "worker"
    return "wait"


def _no_worker_note(last_beat: datetime | None) -> str:
    seen = (f"no worker heartbeat since {iso(last_beat)}" if last_beat
            else "no worker heartbeat has ever been seen")
    return f"{seen}: is `manage.py qcluster` running?"


def _lost(item: WorkItem, where: str, now: datetime) -> tuple[dict, str]:
    """A worker took the item, and no worker has beaten since: it may have stopped. The
    item is taken over (its attempt counted crashed) when the lease runs out."""
    _, last_beat = _worker_fresh(now)
    waiting = {"kind": "worker", "since": iso(last_beat), "lease_until": iso(item.next_run_at),
               "last_worker_heartbeat": iso(last_beat)}
    return waiting, (f"A worker took {where}, but {_no_worker_note(last_beat)} If that worker "
                     f"stopped, the item is taken over when its lease runs out at "
                     f"{iso(item.next_run_at)}.")


_DUE_AFTER = {
    WorkItem.Waiting.DELAY: lambda d, where: f"The delay at {where} ended at {d.get('until')}",
    WorkItem.Waiting.BACKOFF: lambda d, where: (
        f"The backoff before the next attempt at {where} ended at {d.get('until')}"),
    WorkItem.Waiting.PROVIDER: lambda d, where: (
        f"Provider '{d.get('provider')}' is due a new look for {where}"),
    WorkItem.Waiting.APPROVAL: lambda d, where: (
        f"Nobody decided the approval at {where} before its deadline {d['deadline']} "
        "(the step fails when a worker takes the item)" if d.get("deadline") else
        f"The approval at {where} is due a look by a worker (no decision yet: it waits "
        "again)"),
}


def _due(item: WorkItem, step, where: str, phase: str, now: datetime) -> tuple[dict, str]:
    """Due but not claimed: a wait that ran out, a lease that ran out, or new work."""
    since = item.created_at if item.status == WorkItem.Status.PENDING else item.next_run_at
    age = int((now - since).total_seconds()) if since else 0
    waiting: dict = {"kind": phase, "since": iso(since)}
    if item.waiting_on:
        waiting["after"] = item.waiting_on
        first = _DUE_AFTER.get(item.waiting_on, lambda d, w: (
            f"The wait on {item.waiting_on} at {w} ended"))(item.waiting_detail or {}, where)
    elif item.lease_token:
        waiting["after"] = "lease"
        first = (f"The worker that took {where} let its lease run out at "
                 f"{iso(item.next_run_at)} (it stopped or stalled); the next worker counts "
                 "that attempt crashed and tries again")
    else:
        first = ""
    if phase == "worker":
        _, last_beat = _worker_fresh(now)
        waiting["last_worker_heartbeat"] = iso(last_beat)
        told = f"No worker has claimed this item for {age} s and {_no_worker_note(last_beat)}"
        return waiting, f"{first}. {told}" if first else told
    queued = f"Queued for {age} s; a worker is running and will claim it in turn."
    return waiting, f"{first}. {queued}" if first else queued


def _hhmm(moment: datetime | None) -> str:
    return moment.strftime("%H:%M UTC") if moment else "?"


def admin_change_url(item: WorkItem) -> str:
    return f"{settings.AUXOT_PUBLIC_BASE_URL}/admin/workflows/workitem/{item.pk}/change/"


def _wait_approval(item: WorkItem, step, where: str, now: datetime) -> tuple[dict, str]:
    detail = item.waiting_detail or {}
    link = admin_change_url(item)
    waiting = {"kind": "approval", "since": iso(item.waiting_since),
               "step": step.name if step else None, "deadline": detail.get("deadline"),
               "instructions": detail.get("instructions", ""), "approve_url": link}
    if detail.get("decision"):
        # Decided; the engine applies it when a worker takes the item (moments, normally).
        waiting.update({key: detail.get(key) for key in ("decision", "decided_by",
                                                         "decided_at")})
        verb = "Approved" if detail["decision"] == "approve" else "Rejected"
        return waiting, (f"{verb} by {detail.get('decided_by')} at {where}; the decision "
                         f"takes effect when a worker picks the item up{_worker_note(now)}.")
    deadline = f" (deadline {detail['deadline']})" if detail.get("deadline") else ""
    return waiting, (f"Waiting for approval at {where} since {_hhmm(item.waiting_since)}"
                     f"{deadline}; approve it at {link}")


def _worker_note(now: datetime) -> str:
    last_beat = worker_last_seen_cached()
    if last_beat is None or now - last_beat > heartbeat_stale():
        return (f", but no worker heartbeat has been seen since {iso(last_beat)}: is "
                "`manage.py qcluster` running?" if last_beat else
                ", but no worker heartbeat has ever been seen: is `manage.py qcluster` running?")
    return " (normally within moments)"


# A provider's queue position as this process read it at most this long ago, per item.
_provider_positions = TtlCache(HEARTBEAT_CACHE_SECONDS)


def presenter_caches_clear() -> None:
    """Forget the cached heartbeat and provider positions (tests; after a restore)."""
    _provider_positions.clear()
    worker_last_seen_cache_clear()


def _provider_detail(item: WorkItem, now: datetime) -> dict:
    """The item's place in its provider's line as this process read it at most
    HEARTBEAT_CACHE_SECONDS ago; without a ticket, what the step saw when it asked."""
    return (_provider_positions.get(item.pk, lambda: provider_position(work_id=item.pk,
                                                                       now=now))
            or dict(item.waiting_detail or {}))


def _wait_provider(item: WorkItem, step, where: str, now: datetime) -> tuple[dict, str]:
    detail = _provider_detail(item, now)
    ahead = detail.get("ahead", 0)
    waiting = {"kind": "provider", "since": iso(item.waiting_since),
               "step": step.name if step else None, **detail}
    items = "item waits" if ahead == 1 else "items wait"
    counted = f"at least {ahead}" if detail.get("ahead_at_least") else f"{ahead}"
    return waiting, (f"Provider '{detail.get('provider')}' is at its concurrency limit "
                     f"({detail.get('limit')}); {counted} {items} ahead of this one.")


def _wait_backoff(item: WorkItem, step, where: str, now: datetime) -> tuple[dict, str]:
    detail = item.waiting_detail or {}
    waiting = {"kind": "backoff", "since": iso(item.waiting_since),
               "step": step.name if step else None,
               **{k: detail.get(k) for k in ("reason", "attempt", "max_attempts", "until")}}
    return waiting, (f"Retrying {where} at {detail.get('until')} after {detail.get('reason')} "
                     f"(attempt {detail.get('attempt')} of {detail.get('max_attempts')} "
                     "failed); check the service it calls if this repeats.")


_WAITS = {
    WorkItem.Waiting.APPROVAL: _wait_approval,
    WorkItem.Waiting.PROVIDER: _wait_provider,
    WorkItem.Waiting.BACKOFF: _wait_backoff,
}


def ahead_bucket(ahead: int, at_least: bool = False) -> int:
    """A place in a provider's line as the state names it: exact below 10, then by tens
    below 100, by hundreds below PROVIDER_AHEAD_SHOWN_MAX, and that many past it (the
    poll's own "at least"). A long line moving one ticket at a time changes the state
    once per bucket, not once per ticket."""
    if at_least or ahead >= PROVIDER_AHEAD_SHOWN_MAX:
        return PROVIDER_AHEAD_SHOWN_MAX
    for step in (100, 10):
        if ahead >= step:
            return ahead // step * step
    return max(0, ahead)


def poll_state(item: WorkItem, *, attempts: int, now: datetime | None = None) -> str:
    """The `Auxot-State` of an item: one token that changes whenever the poll body shows
    something new while the item is not finished (README "Long-poll"; the fields it leaves
    out, and why, are listed in tests/intakes/test_poll_state.py):
    `{status}.{step}.{waiting_on}.{phase}.{attempts}.{detail}`.

    `phase` (`_phase`) says who has the item: a worker (`run`), a worker gone quiet
    (`lost`), the queue (`queue`, or `worker` when no worker beats), its wait (`wait`);
    `attempts` counts its attempt rows (a new attempt, a crash, a retry); `detail` is an
    approval's decision or, while it waits in a provider's line, the bucket of its place
    there (`ahead_bucket`), else `-`. Reads nothing but the caches the poll body reads
    (the heartbeat, the provider position), so the body and its state agree."""
    now = now or timezone.now()
    phase = _phase(item, now)
    detail = "-"
    if item.waiting_on == WorkItem.Waiting.APPROVAL:
        detail = (item.waiting_detail or {}).get("decision") or "-"
    elif item.waiting_on == WorkItem.Waiting.PROVIDER and phase == "wait":
        place = _provider_detail(item, now)
        detail = f"p{ahead_bucket(int(place.get('ahead') or 0), bool(place.get('ahead_at_least')))}"
    return (f"{item.status}.{item.current_step}.{item.waiting_on or '-'}.{phase}."
            f"{attempts}.{detail}")


def _retry_after(item: WorkItem, now: datetime) -> int | None:
    if item.is_terminal:
        return None
    if item.waiting_on and item.next_run_at:
        seconds = int((item.next_run_at - now).total_seconds()) + 1
        return max(1, min(seconds, 30))
    return 1


def work_item_view(item: WorkItem, *, now: datetime | None = None,
                   replayed_by: list[str] | None = None,
                   progress: tuple[list, list] | None = None) -> WorkItemView:
    """The poll body. `replayed_by`: the failed item's replays when the caller has read them
    already (the poll reads them with the item); None reads them here. `progress`: the
    item's (steps, runs) when the caller has read them (`step_progress_many`)."""
    now = now or timezone.now()
    steps, runs = step_progress(item) if progress is None else progress
    waiting_on, diagnosis = _explain(item, steps, now)
    current = steps[item.current_step] if (
        not item.is_terminal and item.current_step < len(steps)) else None
    body = {
        "work_id": str(item.pk),
        "intake_id": str(item.intake_id) if item.intake_id else None,
        "workflow": {"id": str(item.workflow_id), "name": item.workflow.name},
        "status": item.status,
        "created_at": iso(item.created_at),
        "started_at": iso(item.started_at),
        "finished_at": iso(item.finished_at),
        "output": item.output if item.status == WorkItem.Status.COMPLETED else None,
        "error": item.error if item.status == WorkItem.Status.FAILED else None,
        "correlation_id": item.correlation_id or None,
        "current_step": {"position": current.position, "name": current.name,
                         "kind": current.kind} if current else None,
        "waiting_on": waiting_on,
        "diagnosis": diagnosis,
        "steps": _step_rows(item, steps, runs),
        # Set once retention removed the input, output and step results (the item stays).
        "redacted_at": iso(item.redacted_at),
        "replay_of": str(item.replay_of_id) if item.replay_of_id else None,
        "resumed_from_step": item.resumed_from_step,
        "replayed_by": _replayed_by(item) if replayed_by is None else replayed_by,
    }
    return WorkItemView(body=body, retry_after=_retry_after(item, now),
                        state=poll_state(item, attempts=len(runs), now=now))
