"""Listeners for the engine's signals, and for an intake's deletion. Each receiver calls one
service."""

import logging
import time

from django.conf import settings
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from intakes.callbacks import (
    callback_deliveries_create,
    callback_deliveries_sweep,
    callback_deliveries_wake,
    callback_delivery_create,
)
from intakes.models import Intake
from intakes.services import intake_deletion_record
from workflows.signals import cluster_serving, tick, work_item_finished, work_items_finished

logger = logging.getLogger(__name__)
SWEEP_EVERY_SECONDS = 10.0
_last_sweep = 0.0


CREATED = "_auxot_callback_created"  # set on items whose batch created their deliveries


@receiver(work_items_finished, dispatch_uid="intakes.callbacks_on_batch_finish")
def _on_work_items_finished(sender, work_items, **kwargs) -> None:
    try:
        handled = callback_deliveries_create(work_items=work_items)
    except Exception:
        # Each item's own receiver below tries again; the tick's sweep is the last resort.
        logger.exception("creating the callback deliveries of %s items failed", len(work_items))
        return
    for item in handled:
        setattr(item, CREATED, True)


@receiver(work_item_finished, dispatch_uid="intakes.callback_on_finish")
def _on_work_item_finished(sender, work_item, **kwargs) -> None:
    if getattr(work_item, CREATED, False):
        return
    try:
        callback_delivery_create(work_item=work_item)
    except Exception:
        # The item is committed and final; the tick's sweep creates the missing delivery.
        logger.exception("creating the callback delivery of %s failed", work_item.pk)


@receiver(tick, dispatch_uid="intakes.callback_wake")
def _on_tick(sender, now, **kwargs) -> None:
    global _last_sweep
    if time.monotonic() - _last_sweep >= SWEEP_EVERY_SECONDS:
        _last_sweep = time.monotonic()
        callback_deliveries_sweep(now=now)
    if settings.AUXOT_CALLBACK_DELIVERY == "tasks":  # the dispatcher finds due ones itself
        callback_deliveries_wake(now=now)


@receiver(cluster_serving, dispatch_uid="intakes.callback_dispatcher")
def _on_cluster_serving(sender, **kwargs):
    """Each qcluster main process runs a callback dispatcher (unless threads are 0)."""
    if settings.AUXOT_CALLBACK_DELIVERY != "dispatcher" or not settings.AUXOT_CALLBACK_THREADS:
        return None
    from intakes.dispatcher import Dispatcher

    return Dispatcher().start()


@receiver(pre_delete, sender=Intake, dispatch_uid="intakes.audit_deletion")
def audit_intake_deletion(sender, instance: Intake, origin=None, **kwargs) -> None:
    intake_deletion_record(intake=instance, origin=origin)
