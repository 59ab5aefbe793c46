"""The callback dispatcher: many concurrent attempts, none of them in a step worker.

One loop thread claims due deliveries (`callback_deliveries_claim`: a guarded UPDATE and a
lease). A few database threads (DB_THREADS) prepare each claimed batch (up to
PREPARE_BATCH at a time) in one job (`callback_attempts_prepare`: all its attempt rows in
one commit before anything is sent, then the bodies signed, in a fixed number of queries),
and later record the outcomes under the lease; the POSTs run in
AUXOT_CALLBACK_THREADS sender threads that never touch the database (an attempt is I/O:
waiting on a receiver), so the pool can be large without holding a connection per thread.
It runs in each `qcluster` main process (started through the `cluster_serving` signal, so
a receiver never holds a step worker) or alone as `manage.py callbacks`; several may run
at once, the claim keeps each attempt single.

Fairness: while other endpoints have due deliveries, one endpoint (scheme, host, port and
organization: callbacks.endpoint_key) has at most AUXOT_CALLBACK_PER_HOST_CONCURRENCY
attempts in flight here; idle senders may be lent to an endpoint over its cap, but a quarter
of the pool (at least the cap) is always kept for endpoints under theirs. And one
organization, however many endpoints it has, never holds the last eighth of the pool (at
least one sender: `org_reserve`), which stays for the other organizations. So neither a
hanging receiver nor one organization's many receivers can starve a healthy one.
An endpoint whose circuit breaker is open is not claimed at all (its deliveries wait,
attempt numbers unchanged) until its pause ends; then one probe attempt at a time.

On schedule: the loop sleeps until the earliest due `next_attempt_at` (or a breaker's pause
end), and wakes early on a NOTIFY (PostgreSQL: a delivery was created or made due; a relay
thread listens) or when a few senders (GATHER) are free again; on SQLite it also looks
every AUXOT_CALLBACK_POLL_SECONDS. One look is one read of the deliveries due soonest (two
when idle senders can be lent), whatever it then claims; looks start at least LOOK_SPACING
apart, so under load one look takes what came due since the last (one claim, prepared in
jobs of up to PREPARE_BATCH) instead of one look per delivery. An expired
lease (a dispatcher that died mid-attempt) makes its delivery due again, so it is claimed
once, by one dispatcher, with the same webhook-id.

Priority: the dispatcher's threads run at AUXOT_CALLBACK_NICE below the thread that started
it (Linux nice is per thread), so on a saturated host the steps get most of the CPU and the
callbacks take the CPU they leave.

Stopping: `stop()` ends claiming; `join(grace)` lets in-flight attempts finish for up to
`grace` seconds and gives back (releases) the leases of those that did not.
"""

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from intakes.callbacks import (
    CHANNEL,
    PreparedAttempt,
    SendResult,
    callback_attempt_finish,
    callback_attempt_post,
    callback_attempt_prepare,
    callback_attempts_finish,
    callback_attempts_prepare,
    callback_deliveries_claim,
    callback_deliveries_due,
    callback_delivery_release,
    delivery_log_context,
    endpoint_org,
    endpoint_probe_claim,
    endpoints_paused,
)
from intakes.models import CallbackDelivery
from workflows.wake import WakeListener

logger = logging.getLogger(__name__)
DB_THREADS = 4  # threads that write attempt rows and outcomes (a connection each)
OUTCOME_BATCH = 32  # outcomes recorded per transaction
# Attempts prepared per job (one transaction): a large claim is split so several database
# threads prepare it at once and its first POSTs do not wait for its last bodies.
PREPARE_BATCH = 16
RELAY_SLICE_SECONDS = 0.5  # PostgreSQL: the NOTIFY relay's longest wait (it then checks stop)
GATHER = 8  # at most this many senders free before the claim loop looks again
IDLE_LOOK_SECONDS = 5.0  # PostgreSQL: the longest sleep without a look (a lost NOTIFY)
# Looks start at least this far apart. A look's fixed cost (its reads, the claim, a prepare
# job, an outcome commit, the threads' hand-offs) is ~4.5 ms of CPU whether it takes one
# delivery or sixty: at a steady 100 deliveries/s, a look per delivery cost 5.2-6.2 ms of
# CPU per attempt, spaced 0.1 s apart 1.7-2.1 ms (bench/dispatcher.py). It adds at most
# this much to the wait of an attempt that comes due just after a look, nothing when idle.
LOOK_SPACING = 0.1


class DatabaseJobs:
    """The database threads' work: outcomes first, taken in batches (one commit records many
    and the window in which a crash would lose a receiver's 2xx stays short), then the
    preparation of claimed batches, one batch per job.

    Wake-ups are counted: each costs a context switch, and on a busy host a woken thread can
    take the CPU from the one holding the GIL, stalling every other thread of the process.
    So a job wakes one thread, not all: a preparation wakes one preparing thread; an outcome
    wakes the outcome thread only if it waits and nobody woke it yet (it then takes all that
    came meanwhile, up to OUTCOME_BATCH), and a preparing thread only when more than a batch
    is waiting."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._for_outcomes = threading.Condition(lock)  # the outcome thread waits here
        self._for_any = threading.Condition(lock)  # the preparing threads wait here
        self._outcomes: deque = deque()
        self._prepares: deque = deque()
        self._closed = False
        self._outcome_thread_waits = False  # and has not been woken yet

    def put(self, job: tuple) -> None:
        with self._for_any:
            self._prepares.append(job)
            self._for_any.notify()

    def put_outcome(self, outcome: tuple) -> None:
        with self._for_any:
            self._outcomes.append(outcome)
            if self._outcome_thread_waits:
                self._outcome_thread_waits = False
                self._for_outcomes.notify()
            elif len(self._outcomes) > OUTCOME_BATCH:
                self._for_any.notify()  # more than one batch: a preparing thread helps

    def close(self) -> None:
        with self._for_any:
            self._closed = True
            self._for_outcomes.notify_all()
            self._for_any.notify_all()

    def take(self, block: bool = True, outcomes_only: bool = False) -> tuple | None:
        with self._for_any:
            if outcomes_only:
                while block and not (self._outcomes or self._closed):
                    self._outcome_thread_waits = True
                    self._for_outcomes.wait()
                self._outcome_thread_waits = False
            else:
                while block and not (self._outcomes or self._prepares or self._closed):
                    self._for_any.wait()
            if self._outcomes:
                batch = [self._outcomes.popleft()
                         for _ in range(min(OUTCOME_BATCH, len(self._outcomes)))]
                return ("finish", batch)
            if self._prepares and not outcomes_only:
                return self._prepares.popleft()
            return None


_used = threading.local()  # per thread (each has its own connection): when it last ran a job
HEALTH_CHECK_IDLE_SECONDS = 1.0


def _fresh_connection() -> None:
    """Drop this thread's connection if it is broken or too old, as a request would, but
    only after it sat idle for HEALTH_CHECK_IDLE_SECONDS: Django's check then costs a
    `SELECT 1` on the next query, a round trip per job under load for nothing), or at once
    after a database error."""
    if connection.in_atomic_block:
        return
    now = time.monotonic()
    # After an error (PostgreSQL restarted, say) at once: the next job gets a live connection.
    if connection.errors_occurred or now - getattr(_used, "at", 0.0) > HEALTH_CHECK_IDLE_SECONDS:
        close_old_connections()
    _used.at = now


class Dispatcher:
    def __init__(self, *, threads: int | None = None, per_host: int | None = None,
                 db_threads: int = DB_THREADS, clock: Callable[[], datetime] = timezone.now,
                 name: str = "callbacks"):
        self.threads = threads or settings.AUXOT_CALLBACK_THREADS
        self.per_host = per_host or settings.AUXOT_CALLBACK_PER_HOST_CONCURRENCY
        # Senders never lent to an endpoint over its cap.
        self.reserve = min(self.threads, max(self.per_host, self.threads // 4))
        # Senders one organization never holds, however many endpoints it has (each under its
        # own cap): an eighth of the pool (at least one) is kept for the other organizations.
        self.org_reserve = max(1, self.threads // 8) if self.threads > 1 else 0
        self.per_org = self.threads - self.org_reserve
        self.gather = max(1, min(GATHER, self.threads // 8))  # free senders that wake a look
        self.db_threads = db_threads
        self.clock = clock
        self.name = name
        self._db_jobs = DatabaseJobs()
        self._posts: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: dict = {}  # delivery id -> (lease token, endpoint)
        self._per_endpoint: Counter = Counter()
        self._per_org: Counter = Counter()  # endpoint_org() -> attempts in flight
        self._wake = threading.Event()  # an attempt finished: a slot is free
        self._stopping = threading.Event()
        self._loop: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._priority: int | None = None  # the nice value its threads run at (see start)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Dispatcher":
        # Relative to the thread that starts the dispatcher, once (a thread's own threads
        # would inherit its lowered priority and lower it again).
        if settings.AUXOT_CALLBACK_NICE:
            self._priority = min(19, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
                                 + settings.AUXOT_CALLBACK_NICE)
        for index in range(self.db_threads):
            # The first records outcomes only, so an answer never waits behind preparations.
            self._spawn(self._db_loop if index else self._outcome_loop, f"{self.name}-db-{index}")
        for index in range(self.threads):
            self._spawn(self._post_loop, f"{self.name}-post-{index}")
        self._loop = threading.Thread(target=self._niced(self.run), name=f"{self.name}-claim",
                                      daemon=True)
        self._loop.start()
        logger.info("callback dispatcher started: %s senders, %s per endpoint",
                    self.threads, self.per_host)
        return self

    def _niced(self, target: Callable[[], None]) -> Callable[[], None]:
        """`target`, run at AUXOT_CALLBACK_NICE below the process's priority (Linux: nice is
        per thread; elsewhere, or without permission, at the same priority)."""
        priority = self._priority

        def run() -> None:
            if priority is not None:
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), priority)
                except OSError:
                    logger.debug("could not lower the dispatcher's priority", exc_info=True)
            target()

        return run

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=self._niced(target), name=name, daemon=True)
        thread.start()
        self._workers.append(thread)

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
            self._in_flight.clear()  # a job not yet started for these now skips them
        for delivery_id, (token, _endpoint) in left.items():
            self._release(delivery_id, token)
        if left:
            logger.warning("callback dispatcher stopped with %s attempts in flight: released "
                           "(they go out again with the same webhook-id)", len(left))
        self._db_jobs.close()
        for _ in range(self.threads):
            self._posts.put(None)
        connection.close()
        return not left

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # --- the claim loop -------------------------------------------------------------------
    def run(self) -> None:
        if connection.vendor == "postgresql":
            self._spawn(self._relay, f"{self.name}-listen")
        try:
            last = -LOOK_SPACING
            while not self._stopping.is_set():
                gap = LOOK_SPACING - (time.monotonic() - last)
                if gap > 0 and self._stopping.wait(gap):
                    break
                last = time.monotonic()
                self._wake.clear()  # this look covers every reason to look given so far
                try:
                    until_next = self.run_once()
                    wait = self._idle_wait() if until_next is None else min(until_next,
                                                                            self._idle_wait())
                except Exception:
                    logger.exception("callback dispatcher failed; retrying")
                    connection.close()
                    wait = 1.0
                self._sleep(wait)
        finally:
            connection.close()

    def _relay(self) -> None:
        """PostgreSQL: turn each NOTIFY (a delivery was created or made due) into a wake-up
        of the claim loop, which sleeps on one event for both reasons to look again."""
        listener = WakeListener(channel=CHANNEL)
        try:
            while not self._stopping.is_set():
                if listener.wait(RELAY_SLICE_SECONDS):
                    self._wake.set()
        finally:
            listener.close()

    def run_once(self, now: datetime | None = None) -> float | None:
        """Claim and hand out what is due now. Returns the seconds until the next delivery
        comes due or a breaker's pause ends (None: nothing scheduled, or only endpoints at
        their cap, which a finishing attempt wakes); 0 to look again now.

        One read per look: the earliest deliveries by due time (a few more than the free
        senders), which gives both what to claim and when to look next."""
        _fresh_connection()
        now = now or self.clock()
        paused, probe_ready, next_change = endpoints_paused(now=now)
        free = self.threads - self.in_flight
        if self._stopping.is_set():
            return 0.0
        if free <= 0:
            return None  # a finishing attempt wakes the loop
        limit = free * 2 + 1
        with self._lock:
            counts = Counter(self._per_endpoint)
            org_counts = Counter(self._per_org)

        def at_caps() -> tuple[set[str], set[str]]:
            return ({key for key, count in counts.items() if count >= self.per_host},
                    {org for org, count in org_counts.items() if org and count >= self.per_org})

        full, full_orgs = at_caps()
        chosen: list = []
        upcoming, more = None, False
        # First within the caps (endpoints and organizations at theirs are not even read, so
        # a backlog of one cannot hide the others), then lending idle senders to endpoints over
        # theirs while `reserve` senders stay free (for endpoints under theirs). An
        # organization at its cap holds all but `org_reserve`: nothing is left to lend it.
        for lending in (False, True):
            if lending:
                full, full_orgs = at_caps()
                if (free - len(chosen) <= min(self.reserve, self.org_reserve)
                        or not (full or full_orgs)):
                    break
            rows = (self._due(exclude=paused, limit=limit) if lending else
                    self._due(exclude=paused | full, limit=limit, exclude_orgs=full_orgs))
            soonest = next((at for _pk, _endpoint, at in rows if at > now), None)
            # An endpoint at its cap but with senders to lend also says when to look next.
            upcoming = min(t for t in (upcoming, soonest) if t is not None) if (
                upcoming or soonest) else None
            if not lending:
                more = len(rows) == limit and soonest is None
            for delivery_id, endpoint, at in rows:
                left = free - len(chosen)
                if at > now or left <= 0:
                    break
                if delivery_id in chosen or endpoint in paused:
                    continue
                org = endpoint_org(endpoint)
                over_endpoint = counts[endpoint] >= self.per_host
                over_org = bool(org) and org_counts[org] >= self.per_org
                if not lending and (over_endpoint or over_org):
                    continue
                keep = max(self.reserve if over_endpoint else 0,
                           self.org_reserve if over_org else 0)
                if left <= keep:
                    continue
                if endpoint in probe_ready:
                    paused.add(endpoint)  # one probe at a time
                    probe_ready.discard(endpoint)
                    if not endpoint_probe_claim(key=endpoint, now=now):
                        continue
                chosen.append(delivery_id)
                counts[endpoint] += 1
                org_counts[org] += 1
        taken = self._hand_out(chosen, now)
        if self._stopping.is_set():
            return 0.0
        if more and taken and self.in_flight < self.threads:
            return 0.0  # more may be due than this look read
        moments = [t for t in (upcoming, next_change) if t is not None]
        if not moments:
            return None
        return max(0.0, (min(moments) - now).total_seconds())

    def _idle_wait(self) -> float:
        if connection.vendor == "postgresql":
            return IDLE_LOOK_SECONDS
        return settings.AUXOT_CALLBACK_POLL_SECONDS

    @staticmethod
    def _due(exclude: set[str], limit: int, exclude_orgs: set[str] = frozenset()
             ) -> list[tuple]:
        return callback_deliveries_due(exclude=exclude, limit=limit, exclude_orgs=exclude_orgs)

    def _hand_out(self, ids: list, now: datetime) -> int:
        claimed = callback_deliveries_claim(ids=ids, now=now)  # less any another took
        with self._lock:
            for delivery, token in claimed:
                self._in_flight[delivery.pk] = (token, delivery.endpoint)
                self._per_endpoint[delivery.endpoint] += 1
                self._per_org[endpoint_org(delivery.endpoint)] += 1
        for start in range(0, len(claimed), PREPARE_BATCH):
            self._db_jobs.put(("prepare", claimed[start:start + PREPARE_BATCH], now))
        return len(claimed)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)

    # --- the workers ----------------------------------------------------------------------
    def _db_loop(self) -> None:
        while (job := self._db_jobs.take()) is not None:
            self._db_job(job)
        connection.close()

    def _outcome_loop(self) -> None:
        while (job := self._db_jobs.take(outcomes_only=True)) is not None:
            self._db_job(job)
        connection.close()

    def _post_loop(self) -> None:
        while (prepared := self._posts.get()) is not None:
            self._post(prepared)

    def send_queued(self) -> int:
        """Run what was claimed to the end, in this thread (a dispatcher not `start()`ed).
        Returns the attempts recorded."""
        recorded = 0
        while True:
            job = self._db_jobs.take(block=False)
            if job is not None:
                recorded += len(job[1]) if job[0] == "finish" else 0
                self._db_job(job)
                continue
            try:
                prepared = self._posts.get_nowait()
            except queue.Empty:
                return recorded
            if prepared is not None:
                self._post(prepared)

    def _db_job(self, job: tuple) -> None:
        if job[0] == "finish":
            self._finish(job[1])
            return
        _kind, claimed, claimed_at = job
        batch = []
        for delivery, token in claimed:
            with self._lock:
                given_back = self._in_flight.get(delivery.pk, ("",))[0] != token
            if given_back or self._stopping.is_set():
                # Stopping before this attempt started: give it back unsent (no attempt row).
                if not given_back:
                    self._release(delivery.pk, token)
                self._done(delivery, token)
            else:
                batch.append((delivery, token))
        if not batch:
            return
        # The attempts' timestamp is their start, not the claim's.
        now = max(claimed_at, timezone.now())
        try:
            _fresh_connection()
            results = callback_attempts_prepare(claimed=batch, now=now)
        except Exception:
            logger.exception("preparing %s callback attempts failed; one at a time", len(batch))
            connection.close()
            results = [self._prepare_one(delivery, token, now) for delivery, token in batch]
        for (delivery, token), prepared in zip(batch, results, strict=True):
            if isinstance(prepared, PreparedAttempt):
                self._posts.put(prepared)
                continue
            if prepared is not None:  # its row is written: the next attempt marks it
                with delivery_log_context(delivery):
                    logger.error("preparing a callback attempt for delivery %s failed",
                                 delivery.pk, exc_info=prepared)
            # Its lease lapses and it is claimed again; or (None) it was lost before its
            # attempt row: another dispatcher claimed it, nothing is sent from here.
            self._done(delivery, token)

    def _prepare_one(self, delivery: CallbackDelivery, token: str,
                     now: datetime) -> PreparedAttempt | None:
        """One delivery of a batch that failed as a whole (None: this one failed too)."""
        try:
            _fresh_connection()
            with delivery_log_context(delivery):
                return callback_attempt_prepare(delivery=delivery, token=token, now=now)
        except Exception:
            logger.exception("preparing a callback attempt for delivery %s failed", delivery.pk)
            connection.close()
            return None

    def _finish(self, outcomes: list) -> None:
        """Record a batch of outcomes in one transaction (one commit), each under its lease;
        if the batch fails, each in its own."""
        try:
            _fresh_connection()
            callback_attempts_finish(outcomes=outcomes)
        except Exception:
            logger.exception("recording %s callback attempts failed; one at a time",
                             len(outcomes))
            self._finish_each(outcomes)
        finally:
            for prepared, _result in outcomes:
                self._done(prepared.delivery, prepared.token)

    @staticmethod
    def _finish_each(outcomes: list) -> None:
        for prepared, result in outcomes:
            try:
                _fresh_connection()
                with delivery_log_context(prepared.delivery):
                    callback_attempt_finish(prepared=prepared, result=result)
            except Exception:
                # Its lease lapses and it is claimed again (the open attempt marked then).
                logger.exception("recording the callback attempt of delivery %s failed",
                                 prepared.delivery.pk)
                connection.close()

    def _post(self, prepared: PreparedAttempt) -> None:
        try:
            result = callback_attempt_post(prepared)
        except Exception as exc:  # callback_post never raises; belt and braces
            logger.exception("callback POST for delivery %s failed", prepared.delivery.pk)
            result = SendResult(error=f"request failed: {type(exc).__name__}")
        self._db_jobs.put_outcome((prepared, result))

    def _release(self, delivery_id, token: str) -> None:
        try:
            callback_delivery_release(delivery_id=delivery_id, token=token)
        except Exception:
            logger.exception("could not release delivery %s; its lease will lapse", delivery_id)

    def _done(self, delivery: CallbackDelivery, token: str) -> None:
        with self._idle:
            if self._in_flight.get(delivery.pk, ("",))[0] == token:
                del self._in_flight[delivery.pk]
            for counter, key in ((self._per_endpoint, delivery.endpoint),
                                 (self._per_org, endpoint_org(delivery.endpoint))):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
            self._idle.notify_all()
            # Look again once a few senders are free, not for each: a look costs the same
            # for one delivery as for many.
            wake = self.threads - len(self._in_flight) >= self.gather
        if wake:
            self._wake.set()
