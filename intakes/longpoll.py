"""Bounded long-poll for `GET .../work/{work_id}?wait=N[&state=S]`.

A waiting request holds a server thread but no database connection: it closes its own
connection and sleeps on an Event. One watcher thread per web process rechecks every
waited item in a single query each AUXOT_LONG_POLL_RECHECK_SECONDS and wakes the requests
whose item became terminal (or, for a request that gave `?state=`, whose state changed),
so 50 waiters cost one connection and ~4 queries a second, not 50 connections. At most
AUXOT_LONG_POLL_MAX_WAITERS requests wait per process; the next one is answered at once (it
degrades to a normal poll, marked `Auxot-Wait-Refused: busy`), as is one past its API key's
or its organization's share of them, so long-polls can never take every thread; and while
it waits a request gives back its working slot (auxot/activerequests.py), so waiting
long-polls never take a trigger's.
"""

import logging
import re
import threading
import time
import uuid
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count
from django.utils import timezone

from auxot.activerequests import slot_released
from auxot.errors import ApplicationError
from workflows.models import WorkItem
from workflows.presenters import poll_state

logger = logging.getLogger(__name__)


# A plain decimal number in ASCII digits, an exponent allowed (the Python client sends
# f"{wait:g}", "1e-05" for tiny values). Not float()'s grammar: that also takes "0_1",
# " 5\n", "+5", "inf" and any script's digits (fullwidth or Arabic-Indic).
_WAIT_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def item_state(item: WorkItem, *, attempts: int, now: datetime | None = None) -> str:
    """What a poller sees change while an item runs, as one token (the `Auxot-State` header,
    the `?state=` a long-poll waits to change): `poll_state`, e.g.
    `running.1.backoff.wait.2.-`, `pending.0.-.queue.0.-`, `running.2.approval.queue.1.approve`."""
    return poll_state(item, attempts=attempts, now=now)


# What `poll_state` reads of the item row.
_STATE_FIELDS = ("id", "status", "current_step", "waiting_on", "waiting_detail", "lease_token",
                 "next_run_at")
# This server's tokens (six parts), and the three-part ones earlier versions gave: a caller
# holding one is answered at once (it is another state) and carries on with the new one.
_STATE = re.compile(r"[a-z]{1,16}\.[0-9]{1,9}\.(?:[a-z]{1,16}|-)"
                    r"(?:\.[a-z]{1,16}\.[0-9]{1,9}\.(?:[a-z0-9]{1,16}|-))?")


def state_parse(values: list[str]) -> str | None:
    """`?state=` (every value given) as a state token, None when absent; anything but one
    token as `Auxot-State` gives it is a 400."""
    if not values:
        return None
    if len(values) > 1 or not _STATE.fullmatch(values[0]):
        raise ApplicationError("state must be given once, as the Auxot-State header of an "
                               "earlier answer gave it (e.g. running.1.backoff.wait.1.-).")
    return values[0]


def wait_parse(values: list[str]) -> float | None:
    """`?wait=` (every value the query string gives) as seconds, None when absent. Anything
    but one number with 0 < N <= cap is a 400: `wait=20&wait=0` is not quietly the last one."""
    if not values:
        return None
    cap = settings.AUXOT_LONG_POLL_MAX_SECONDS
    if len(values) > 1:
        raise ApplicationError(f"Give wait once (got it {len(values)} times): a number of "
                               f"seconds above 0 and at most {cap}.")
    raw = values[0]
    value = float(raw) if len(raw) <= 32 and _WAIT_NUMBER.fullmatch(raw) else 0.0
    if not 0 < value <= cap:
        raise ApplicationError(
            f"wait must be a number of seconds above 0 and at most {cap} (got {raw[:20]!r}); "
            "omit it for an immediate answer.",
        )
    return value


class _Watcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per waited item, each waiter's event and the state it waits to change (None:
        # until the item is terminal).
        self._events: dict[uuid.UUID, list[tuple[threading.Event, str | None]]] = {}
        self._waiting = 0
        self._held: dict[tuple, int] = {}  # ("key", pk) / ("org", pk) -> slots held
        self._thread: threading.Thread | None = None

    def wait(self, work_id: uuid.UUID, seconds: float, owner: object = None,
             org: object = None, state: str | None = None) -> bool:
        """Block up to `seconds` or until the item is terminal, or with `state` until its
        state (`item_state`) is another. False: no slot, answer now.
        `owner` (the API key) may hold at most AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY slots and
        `org` (its organization, whatever its number of keys) at most
        AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG: one busy caller, or one tenant with many keys,
        cannot take every slot from the others."""
        event = threading.Event()
        holders = [(("key", owner), settings.AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY),
                   (("org", org), settings.AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG)]
        holders = [(holder, cap) for holder, cap in holders if holder[1] is not None]
        with self._lock:
            if self._waiting >= settings.AUXOT_LONG_POLL_MAX_WAITERS or any(
                    self._held.get(holder, 0) >= cap for holder, cap in holders):
                return False
            if self._thread is None:  # started before anything is counted: if it cannot
                # start (no threads left), nothing leaks and the next waiter tries again
                thread = threading.Thread(target=self._run, name="auxot-longpoll", daemon=True)
                thread.start()
                self._thread = thread
            self._waiting += 1
            for holder, _ in holders:
                self._held[holder] = self._held.get(holder, 0) + 1
            waiter = (event, state)
            self._events.setdefault(work_id, []).append(waiter)
        try:
            event.wait(seconds)
        finally:
            with self._lock:
                self._waiting -= 1
                for holder, _ in holders:
                    if self._held[holder] <= 1:
                        del self._held[holder]
                    else:
                        self._held[holder] -= 1
                events = self._events.get(work_id, [])
                if waiter in events:
                    events.remove(waiter)
                if not events:
                    self._events.pop(work_id, None)
        return True

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    ids = list(self._events)
                    if not ids:
                        self._thread = None  # under the lock: the next waiter starts a new one
                        return
                self._wake(self._states_among(ids))
                time.sleep(settings.AUXOT_LONG_POLL_RECHECK_SECONDS)
        except BaseException:
            # Anything but a database error (those are retried) ends this watcher; it must
            # not stay named as running, or no waiter of this process is ever woken again.
            logger.exception("long-poll watcher stopped; the next waiter starts another")
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
            raise
        finally:
            connection.close()  # this thread's own connection

    @staticmethod
    def _states_among(ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Each waited item's state (`item_state`), in one query (a deleted one: none), plus
        what the poll body reads from its caches (the last heartbeat; a provider line's
        place), at most once per HEARTBEAT_CACHE_SECONDS."""
        try:
            now = timezone.now()
            return {item.pk: item_state(item, attempts=item.attempts, now=now) for item in
                    WorkItem.objects.filter(pk__in=ids).only(*_STATE_FIELDS).annotate(
                        attempts=Count("step_runs"))}
        except DatabaseError as exc:
            # Waiters simply time out and answer with what they have; the next recheck retries.
            logger.warning("long-poll recheck failed: %s", type(exc).__name__)
            connection.close()
            return {}

    def _wake(self, states: dict[uuid.UUID, str]) -> None:
        with self._lock:
            for work_id, now in states.items():
                terminal = now.split(".", 1)[0] not in WorkItem.ACTIVE
                for event, seen in self._events.get(work_id, []):
                    if terminal or (seen is not None and now != seen):
                        event.set()


_watcher = _Watcher()


def work_item_wait(*, item: WorkItem, seconds: float, owner: object = None,
                   org: object = None, state: str | None = None) -> bool:
    """Wait (bounded) for a non-terminal item to finish, or with `state` (what the caller
    last saw; the caller answers at once when the item as read is another) for its state
    to be another. True: it waited (until then or until `seconds` passed; read it again);
    False: this process already has AUXOT_LONG_POLL_MAX_WAITERS waiting, answer with the
    item as read (no wait, no query)."""
    if item.is_terminal:
        return False
    if not connection.in_atomic_block:
        connection.close()  # never hold a connection while we sleep
    with slot_released():  # nor one of the process's working slots (triggers need them)
        return _watcher.wait(item.pk, seconds, owner, org, state)
