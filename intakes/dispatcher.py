"""The callback dispatcher: many concurrent attempts, none of them in a step worker.

One loop thread claims due deliveries (`callback_delivery_claim`: the guarded UPDATE and
lease) and hands each to a pool of AUXOT_CALLBACK_THREADS sender threads (an attempt is
I/O: waiting on a receiver). It runs in each `qcluster` main process (started through the
`cluster_serving` signal, so a step worker is never held by a receiver) or alone as
`manage.py callbacks`; several may run at once, the claim keeps each attempt single.

Fairness: at most AUXOT_CALLBACK_PER_HOST_CONCURRENCY attempts per endpoint (scheme, host,
port) are in flight here, so one hanging receiver holds at most its share of the pool; an
endpoint whose circuit breaker is open is not claimed at all (its deliveries wait, attempt
numbers unchanged) until its pause ends, then one probe attempt at a time.

On schedule: the loop sleeps until the earliest due `next_attempt_at` (or a breaker's pause
end), and wakes early on a NOTIFY (PostgreSQL: a delivery was created or made due) or when
a sender frees a slot; on SQLite it also looks every AUXOT_CALLBACK_POLL_SECONDS. An
expired lease (a dispatcher that died mid-attempt) makes its delivery due again, so it is
claimed once, by one dispatcher, with the same webhook-id.

Stopping: `stop()` ends claiming; `join(grace)` lets in-flight attempts finish for up to
`grace` seconds and gives back (releases) the leases of those that did not.
"""

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Min
from django.utils import timezone

from intakes.callbacks import (
    CHANNEL,
    State,
    callback_delivery_claim,
    callback_delivery_release,
    callback_delivery_send,
    endpoint_probe_claim,
    endpoints_paused,
)
from intakes.models import CallbackDelivery
from workflows.wake import WakeListener

logger = logging.getLogger(__name__)
WAIT_SLICE_SECONDS = 0.05  # PostgreSQL: how often a wait on NOTIFY also checks the pool
IDLE_LOOK_SECONDS = 5.0  # PostgreSQL: the longest sleep without a look (a lost NOTIFY)


def _fresh_connection() -> None:
    # Threads outside a request never get Django's per-request connection check.
    if not connection.in_atomic_block:
        close_old_connections()


class Dispatcher:
    def __init__(self, *, threads: int | None = None, per_host: int | None = None,
                 clock: Callable[[], datetime] = timezone.now, name: str = "callbacks"):
        self.threads = threads or settings.AUXOT_CALLBACK_THREADS
        self.per_host = per_host or settings.AUXOT_CALLBACK_PER_HOST_CONCURRENCY
        self.clock = clock
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: dict[str, tuple] = {}  # token -> (delivery id, endpoint)
        self._per_endpoint: Counter = Counter()
        self._wake = threading.Event()  # a sender finished: a slot is free
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._loop: threading.Thread | None = None
        self._senders: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Dispatcher":
        for index in range(self.threads):
            sender = threading.Thread(target=self._send_loop, name=f"{self.name}-send-{index}",
                                      daemon=True)
            sender.start()
            self._senders.append(sender)
        self._loop = threading.Thread(target=self.run, name=f"{self.name}-claim", daemon=True)
        self._loop.start()
        logger.info("callback dispatcher started: %s threads, %s per endpoint",
                    self.threads, self.per_host)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def join(self, grace: float) -> bool:
        """Wait up to `grace` s for in-flight attempts; release the rest. True: all finished."""
        self.stop()
        deadline = time.monotonic() + max(0.0, grace)
        if self._loop is not None:
            self._loop.join(max(0.0, deadline - time.monotonic()))
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            left = dict(self._in_flight)
            self._in_flight.clear()  # a sender that has not started one now skips it
        for token, (delivery_id, _endpoint) in left.items():
            try:
                callback_delivery_release(delivery_id=delivery_id, token=token)
            except Exception:
                logger.exception("could not release delivery %s; its lease will lapse",
                                 delivery_id)
        if left:
            logger.warning("callback dispatcher stopped with %s attempts in flight: released "
                           "(they go out again with the same webhook-id)", len(left))
        for _ in self._senders:
            self._jobs.put(None)
        connection.close()
        return not left

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # --- the claim loop -------------------------------------------------------------------
    def run(self) -> None:
        listener = WakeListener(channel=CHANNEL)
        try:
            while not self._stopping.is_set():
                try:
                    until_next = self.run_once()
                    wait = self._idle_wait() if until_next is None else min(until_next,
                                                                            self._idle_wait())
                except Exception:
                    logger.exception("callback dispatcher failed; retrying")
                    connection.close()
                    listener.close()
                    wait = 1.0
                self._sleep(listener, wait)
        finally:
            listener.close()
            connection.close()

    def run_once(self, now: datetime | None = None) -> float | None:
        """Claim and hand out what is due now. Returns the seconds until the next delivery
        comes due or a breaker's pause ends (None: nothing scheduled); 0 to look again now."""
        _fresh_connection()
        now = now or self.clock()
        paused, probe_ready, next_change = endpoints_paused(now=now)
        claimed = 0
        while not self._stopping.is_set():
            free = self.threads - self.in_flight
            if free <= 0:
                break
            full = self._full_endpoints()
            rows = list(self._due(now, exclude=paused | full)[:free * 2])
            taken = 0
            for delivery_id, endpoint in rows:
                if self.in_flight >= self.threads:
                    break
                if endpoint in paused or self._is_full(endpoint):
                    continue
                if endpoint in probe_ready:
                    if not endpoint_probe_claim(key=endpoint, now=now):
                        paused.add(endpoint)
                        continue
                    paused.add(endpoint)  # one probe at a time
                    probe_ready.discard(endpoint)
                if self._hand_out(delivery_id, endpoint, now):
                    taken += 1
            claimed += taken
            if taken == 0 or len(rows) < free * 2:
                break
        if self._stopping.is_set():
            return 0.0
        if self.in_flight >= self.threads:
            return None  # a finishing sender wakes the loop
        blocked = paused | self._full_endpoints()
        due = self._due_query(exclude=blocked).aggregate(at=Min("next_attempt_at"))["at"]
        moments = [t for t in (due, next_change) if t is not None]
        if not moments:
            return None
        return max(0.0, (min(moments) - now).total_seconds())

    def _idle_wait(self) -> float:
        if connection.vendor == "postgresql":
            return IDLE_LOOK_SECONDS
        return settings.AUXOT_CALLBACK_POLL_SECONDS

    @staticmethod
    def _due_query(exclude: set[str]):
        query = CallbackDelivery.objects.filter(
            next_attempt_at__isnull=False, state__in=[State.PENDING, State.DELIVERING])
        if exclude:
            query = query.exclude(endpoint__in=exclude)
        return query

    def _due(self, now: datetime, exclude: set[str]):
        return self._due_query(exclude).filter(next_attempt_at__lte=now).order_by(
            "next_attempt_at").values_list("pk", "endpoint")

    def _full_endpoints(self) -> set[str]:
        with self._lock:
            return {key for key, count in self._per_endpoint.items() if count >= self.per_host}

    def _is_full(self, endpoint: str) -> bool:
        with self._lock:
            return self._per_endpoint[endpoint] >= self.per_host

    def _hand_out(self, delivery_id, endpoint: str, now: datetime) -> bool:
        claimed = callback_delivery_claim(delivery_id=delivery_id, now=now)
        if claimed is None:
            return False  # another dispatcher took it
        delivery, token = claimed
        with self._lock:
            self._in_flight[token] = (delivery.pk, endpoint)
            self._per_endpoint[endpoint] += 1
        self._jobs.put((delivery, token, now))
        return True

    def _sleep(self, listener: WakeListener, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.is_set():
                break
            if connection.vendor == "postgresql":
                if listener.wait(min(left, WAIT_SLICE_SECONDS)):
                    break
            else:
                self._wake.wait(left)
        self._wake.clear()

    # --- the senders ----------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            self._send(*job)
        connection.close()

    def send_queued(self) -> int:
        """Send what was claimed, in this thread (for a dispatcher not `start()`ed)."""
        sent = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return sent
            if job is not None:
                self._send(*job)
                sent += 1

    def _send(self, delivery: CallbackDelivery, token: str, claimed_at: datetime) -> None:
        with self._lock:
            given_back = token not in self._in_flight
        if given_back or self._stopping.is_set():
            # Stopping before this attempt started: give it back unsent (no attempt row).
            self._finish(delivery, token, release=not given_back)
            return
        try:
            _fresh_connection()
            # The attempt's timestamp is its start, not the claim's.
            callback_delivery_send(delivery=delivery, token=token,
                                   now=max(claimed_at, timezone.now()))
        except Exception:
            # Its lease lapses and it is claimed again (the open attempt is marked then).
            logger.exception("callback attempt for delivery %s failed", delivery.pk)
            connection.close()
        finally:
            self._finish(delivery, token)

    def _finish(self, delivery: CallbackDelivery, token: str, release: bool = False) -> None:
        if release:
            try:
                callback_delivery_release(delivery_id=delivery.pk, token=token)
            except Exception:
                logger.exception("could not release delivery %s; its lease will lapse",
                                 delivery.pk)
        with self._idle:
            self._in_flight.pop(token, None)
            self._per_endpoint[delivery.endpoint] -= 1
            if self._per_endpoint[delivery.endpoint] <= 0:
                del self._per_endpoint[delivery.endpoint]
            self._idle.notify_all()
        self._wake.set()
