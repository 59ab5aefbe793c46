"""The ticker: a thread in each `qcluster` main process.

django-q2's scheduler runs every 30 s; delays, retry backoffs and expired leases need
sub-second wake-ups. Each tick enqueues items that came due and, every few seconds,
writes this cluster's heartbeat. Several clusters may tick at once: a duplicate task is
harmless because running an item starts with a guarded claim.
"""

import logging
import threading
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

from workflows.services import work_items_wake, worker_heartbeat
from workflows.signals import tick

logger = logging.getLogger(__name__)


class Ticker(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="auxot-ticker", daemon=True)
        self._stopping = threading.Event()
        self.started_at = timezone.now()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        last_beat = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - last_beat >= settings.AUXOT_HEARTBEAT_SECONDS:
                    worker_heartbeat(started_at=self.started_at)
                    last_beat = time.monotonic()
                now = timezone.now()
                work_items_wake(now=now)
                tick.send_robust(sender=Ticker, now=now)
            except Exception:
                # The database may be restarting: drop the connection and try again.
                logger.exception("ticker failed; retrying")
                connection.close()
                self._stopping.wait(1.0)
            self._stopping.wait(settings.AUXOT_TICK_SECONDS)
        connection.close()
