"""Listeners for the engine's signals. Each receiver calls one service."""

from django.dispatch import receiver

from intakes.housekeeping import intakes_prune_due
from workflows.signals import tick


# --- Robustness (issue 6): prune idempotency records and rate windows from the ticker ---
@receiver(tick, dispatch_uid="intakes_prune")
def _prune_on_tick(sender, now, **kwargs) -> None:
    intakes_prune_due(now=now)
