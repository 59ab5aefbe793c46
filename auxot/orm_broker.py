"""The ORM broker (Q_CLUSTER["broker_class"] when no REDIS_URL is set).

django-q2 imports it when it builds a broker (it needs the app registry, so nothing imports
it at start-up). On PostgreSQL an enqueue also sends a NOTIFY, and the pusher, instead of
sleeping `poll` seconds between empty reads, waits on LISTEN for up to `poll` seconds: a
message reaches a worker within milliseconds of its commit, and an idle cluster reads the
queue once per `poll` instead of every few tens of milliseconds. Elsewhere (SQLite) it is
django-q2's ORM broker unchanged.
"""

import logging
from time import sleep

from django.db import connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf

logger = logging.getLogger(__name__)
# The NOTIFY channel (the payload is empty: the pusher reads the table).
QUEUE_CHANNEL = "auxot_q"


class ListeningORM(ORM):
    """django-q2's ORM broker, woken by NOTIFY on PostgreSQL instead of polling."""

    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key=list_key)
        self._listener = None

    def _postgresql(self) -> bool:
        return connections[Conf.ORM].vendor == "postgresql"

    def enqueue(self, task):
        pk = super().enqueue(task)
        if self._postgresql():
            # Inside a transaction it is delivered at commit, when the row becomes visible.
            with connections[Conf.ORM].cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, '')", [QUEUE_CHANNEL])
        return pk

    def dequeue(self):
        if not self._postgresql():
            return super().dequeue()
        # LISTEN before reading: a message committed after the read wakes the wait below.
        listening = self._listen()
        tasks = self._take()
        if tasks or not listening:
            return tasks or None
        if self._wait(Conf.POLL):
            return self._take() or None
        return None

    def _take(self) -> list:
        """django-q2's ORM dequeue without its sleep: lock up to `bulk` waiting messages."""
        waiting = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())
        taken = []
        for task in waiting[0:Conf.BULK]:
            if (self.get_connection().filter(id=task.id, lock=task.lock)
                    .update(lock=self.timeout(task))):
                taken.append((task.pk, task.payload))
            # else another cluster took it first
        return taken

    def _listen(self) -> bool:
        if self._listener is not None:
            return True
        try:
            wrapper = connections.create_connection(Conf.ORM)
            wrapper.ensure_connection()
            wrapper.connection.execute(f"LISTEN {QUEUE_CHANNEL}")
        except Exception:
            logger.exception("broker listener could not connect; polling instead")
            self._sleep()
            return False
        self._listener = wrapper
        return True

    def _wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds; True when a NOTIFY arrived (all pending ones are read)."""
        try:
            raw = self._listener.connection
            woke = any(True for _ in raw.notifies(timeout=timeout, stop_after=1))
            if woke:
                for _ in raw.notifies(timeout=0):
                    pass
            return woke
        except Exception:
            logger.exception("broker listener failed; reconnecting")
            self.listener_close()
            self._sleep()
            return False

    def _sleep(self) -> None:
        sleep(Conf.POLL)

    def listener_close(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                logger.debug("closing the broker listener failed", exc_info=True)
            self._listener = None
