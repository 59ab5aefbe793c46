"""Pruning of expired Idempotency-Key records and old rate-limit windows.

Runs from the qcluster ticker (the `tick` signal) at most once a minute per process; the
lookup of a conflicting key also deletes an expired record on the spot, so correctness
never depends on the prune having run.
"""

import logging
import threading
import time
from datetime import datetime

from intakes.idempotency import idempotency_prune
from intakes.ratelimit import ratelimit_prune

logger = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 60.0
_lock = threading.Lock()
_last = {"at": float("-inf")}


def intakes_prune(*, now: datetime) -> tuple[int, int]:
    """Delete expired idempotency records (one batch) and finished rate windows."""
    return idempotency_prune(now=now), ratelimit_prune(now=now)


def intakes_prune_due(*, now: datetime) -> tuple[int, int] | None:
    with _lock:
        if time.monotonic() - _last["at"] < PRUNE_EVERY_SECONDS:
            return None
        _last["at"] = time.monotonic()
    return intakes_prune(now=now)
