"""The one way any app puts a task on django-q2's broker.

Rows in the database are the source of truth; a message only says "look at this row".
So an enqueue never raises: a lost message is found again by the ticker's sweep.

The ORM broker itself (when no REDIS_URL is set) is `auxot.orm_broker.ListeningORM`.
"""

import logging

logger = logging.getLogger(__name__)
_broker = None


def broker_get():
    """One broker per process: django-q2's Redis broker opens a connection per call otherwise."""
    global _broker
    if _broker is None:
        from django_q.brokers import get_broker

        _broker = get_broker()
    return _broker


def task_enqueue(*, task: str, arg: str, name: str) -> bool:
    """Queue `task(arg)`; True when the broker took it. Failures are logged, not raised."""
    from django_q.tasks import async_task

    try:
        async_task(task, arg, broker=broker_get(), task_name=name)
    except Exception:
        logger.exception("enqueue of %s failed; the sweeper will retry", name)
        return False
    return True
