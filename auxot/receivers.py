"""The ticker's tick prunes expired rejected-request audit rows (at most hourly)."""

import logging

from django.dispatch import receiver

from auxot.audit import audit_prune_due
from workflows.signals import tick

logger = logging.getLogger(__name__)


@receiver(tick, dispatch_uid="auxot.audit_prune")
def _audit_prune_on_tick(sender, now, **kwargs) -> None:
    try:
        audit_prune_due(now=now)
    except Exception:
        logger.exception("pruning rejected-request audit rows failed; next hour retries")
