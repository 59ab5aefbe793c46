"""Wake-ups: how workers learn that work came due, without a broker message per item.

Whoever makes work due calls `work_wake_notify()` inside its transaction. On PostgreSQL with
the ORM broker that is a NOTIFY delivered at commit, heard by each qcluster's ticker
(`WakeListener`), which puts a drain on the broker; with the Redis broker the committing
process pushes the drain itself right after the commit (one hop less: the worker's blocking
pop takes it at once); elsewhere it requests a drain directly. `drain_request()` adds a
message only when none is waiting on the broker, so a backlog of any size holds at most
workers running + `queue_limit` prefetched + 1 waiting drain messages per cluster. The
ticker's sweep (`work_items_wake`) is the safety net: due work with no waiting message gets
one message, once.
"""

import logging
import threading
import time
from datetime import datetime

from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from auxot.broker import broker_get, task_enqueue
from workflows.models import WorkItem

logger = logging.getLogger(__name__)
CHANNEL = "auxot_work"
# The trigger's accept statement may fold the wake into itself (a CTE) with this.
WAKE_SQL = f"SELECT pg_notify('{CHANNEL}', '')"
DRAIN_TASK = "workflows.tasks.work_drain"


# --- Wake-ups ----------------------------------------------------------------------------
def wake_is_notify() -> bool:
    """True when a wake-up is a NOTIFY (PostgreSQL with the ORM broker): a statement that
    writes work may then fold `WAKE_SQL` into itself instead of calling work_wake_notify()."""
    return (connection.vendor == "postgresql" and not settings.Q_CLUSTER.get("sync")
            and not settings.REDIS_URL)


def work_wake_notify() -> None:
    """Tell the workers that work came due. Call it inside the transaction that made it due.

    PostgreSQL with the ORM broker: a NOTIFY, delivered only if and when that transaction
    commits (one statement, no broker write). The Redis broker: a drain request after the
    commit, from this process (no ticker in between). Otherwise (SQLite, ORM broker): a
    drain request in the same transaction as the row. A drain request is a no-op when one
    is waiting already.
    """
    if wake_is_notify():
        with connection.cursor() as cursor:
            cursor.execute(WAKE_SQL)
    elif settings.REDIS_URL or settings.Q_CLUSTER.get("sync"):  # sync: runs it right away
        transaction.on_commit(drain_request)
    else:
        drain_request()


class _ErrorThrottle:
    """While the broker is down every wake-up fails (one per trigger, one per tick): report
    the first failure with its traceback, then at most one line per `seconds`, counting the
    failures it did not report."""

    def __init__(self, seconds: float):
        self.seconds, self.last, self.unreported = seconds, None, 0
        self.lock = threading.Lock()

    def report(self, message: str) -> None:
        now = time.monotonic()
        with self.lock:
            if self.last is not None and now - self.last < self.seconds:
                self.unreported += 1
                return
            unreported, self.unreported, self.last = self.unreported, 0, now
        logger.exception("%s (%d more failures since the last report)", message, unreported)


# A broker outage is one log line per 30 s per process, not a traceback per trigger.
_broker_errors = _ErrorThrottle(30.0)


def drain_request() -> bool:
    """Put one drain message on the broker unless one is already waiting. Never raises."""
    try:
        if broker_get().queue_size() > 0:
            return False
    except Exception:
        _broker_errors.report("could not read the broker's queue size")
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
    """The ticker's wait (and the callback dispatcher's): on PostgreSQL it returns early when
    a NOTIFY arrives on `channel`."""

    def __init__(self, channel: str = CHANNEL) -> None:
        self.wrapper = None
        self.channel = channel

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
            self.wrapper.connection.execute(f"LISTEN {self.channel}")
        return self.wrapper.connection

    def close(self) -> None:
        if self.wrapper is not None:
            try:
                self.wrapper.close()
            except Exception:
                logger.debug("closing the wake listener failed", exc_info=True)
            self.wrapper = None
