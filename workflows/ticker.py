"""The ticker: a thread in each `qcluster` main process.

django-q2's scheduler runs every 30 s; delays, retry backoffs and expired leases need
sub-second wake-ups. Each tick puts a drain message on the broker when work is due and
none is waiting (the safety net), and every few seconds writes this cluster's heartbeat.
Between ticks, on PostgreSQL, it listens for the NOTIFY that committed work sends and asks
for a drain at once. Several clusters may tick at once: a duplicate drain is harmless
because items are claimed with a guarded statement.
"""

import logging
import threading
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

from workflows.services import worker_heartbeat
from workflows.signals import tick
from workflows.wake import WakeListener, drain_request, work_items_wake

logger = logging.getLogger(__name__)
WAKE_GATHER_SECONDS = 0.005


class Ticker(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="auxot-ticker", daemon=True)
        self._stopping = threading.Event()
        self.started_at = timezone.now()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        last_beat = last_tick = 0.0
        listener = WakeListener()
        while not self._stopping.is_set():
            woke = False
            try:
                if time.monotonic() - last_beat >= settings.AUXOT_HEARTBEAT_SECONDS:
                    worker_heartbeat(started_at=self.started_at)
                    last_beat = time.monotonic()
                if time.monotonic() - last_tick >= settings.AUXOT_TICK_SECONDS:
                    last_tick = time.monotonic()
                    now = timezone.now()
                    work_items_wake(now=now)
                    tick.send_robust(sender=Ticker, now=now)
                # PostgreSQL: a NOTIFY (work committed) ends the wait at once.
                woke = listener.wait(max(0.0, last_tick + settings.AUXOT_TICK_SECONDS
                                         - time.monotonic()))
                if woke:
                    drain_request()
            except Exception:
                # The database may be restarting: drop the connection and try again.
                logger.exception("ticker failed; retrying")
                connection.close()
                self._stopping.wait(1.0)
            if woke:  # let a burst of commits gather into one wake-up
                self._stopping.wait(WAKE_GATHER_SECONDS)
        listener.close()
        connection.close()
