import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from workflows.models import WorkerHeartbeat, Workflow, WorkItem

logger = logging.getLogger(__name__)
TASK = "workflows.tasks.work_item_run"
_broker = None


def _get_broker():
    # One broker per process: django-q2's Redis broker opens a connection per call otherwise.
    global _broker
    if _broker is None:
        from django_q.brokers import get_broker

        _broker = get_broker()
    return _broker


def work_item_enqueue(*, work_id) -> None:
    """Put a task for this id on the broker. Never raises: the row is the source of truth."""
    from django_q.tasks import async_task

    try:
        async_task(TASK, str(work_id), broker=_get_broker(), task_name=f"work-{work_id}")
    except Exception:
        # The ticker re-enqueues it after AUXOT_REQUEUE_AFTER_SECONDS.
        logger.exception("enqueue of work item %s failed; the sweeper will retry", work_id)


def work_item_create(
    *,
    workflow: Workflow,
    input: Any,
    intake=None,
    key=None,
    ip: str | None = None,
    correlation_id: str = "",
    callback_url: str = "",
    now: datetime | None = None,
) -> WorkItem:
    """Store a new pending item and its queue entry. Call inside the caller's transaction."""
    now = now or timezone.now()
    item = WorkItem.objects.create(
        workflow=workflow, intake=intake, input=input, created_by_key=key, created_by_ip=ip,
        correlation_id=correlation_id, callback_url=callback_url, created_at=now, next_run_at=now,
        enqueued_at=now,
    )
    if settings.REDIS_URL:
        # Redis is not in our transaction: enqueue only what is committed (MEASURED.md).
        transaction.on_commit(lambda: work_item_enqueue(work_id=item.pk))
    else:
        # The ORM broker's row commits with the item: both or neither.
        work_item_enqueue(work_id=item.pk)
    return item


def _wakeable(now: datetime):
    requeue_before = now - timedelta(seconds=settings.AUXOT_REQUEUE_AFTER_SECONDS)
    return WorkItem.objects.filter(next_run_at__lte=now).filter(
        Q(enqueued_at__isnull=True)
        | Q(enqueued_at__lt=F("next_run_at"))
        | Q(enqueued_at__lt=requeue_before)
    )


def work_items_wake(*, now: datetime | None = None, limit: int = 200) -> int:
    """Enqueue items that came due (delays, backoffs, expired leases, lost messages)."""
    now = now or timezone.now()
    ids = list(_wakeable(now).order_by("next_run_at").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    _wakeable(now).filter(pk__in=ids).update(enqueued_at=now)
    for work_id in ids:
        work_item_enqueue(work_id=work_id)
    return len(ids)


def worker_heartbeat(*, name: str | None = None, started_at: datetime, now=None) -> None:
    now = now or timezone.now()
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    WorkerHeartbeat.objects.update_or_create(
        name=name, defaults={"seen_at": now, "started_at": started_at}
    )
    WorkerHeartbeat.objects.filter(seen_at__lt=now - timedelta(days=1)).delete()


def worker_last_seen() -> datetime | None:
    beat = WorkerHeartbeat.objects.order_by("-seen_at").values_list("seen_at", flat=True).first()
    return beat
