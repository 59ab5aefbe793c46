"""Polls per second one API key, and one organization across its keys, may make to one web
process (AUXOT_POLL_RATE_PER_KEY, AUXOT_POLL_RATE_PER_ORG): token buckets in memory.
Approvals and cancels draw on the same buckets.

Triggers are counted across the fleet (intakes/ratelimit.py) because each one writes; a
poll only reads, so counting it in the database would double its cost. What a poll limit
protects is the process answering it (its few working slots, auxot/activerequests.py), so
it is counted there, with no I/O: a loop polling without pause cannot take a process's
slots from every other caller. A bucket holds five seconds' worth, so a burst after a
quiet spell (many jobs starting their waits at once) passes.
"""

import math
import threading
import time

from django.conf import settings

from auxot.errors import ApplicationError

BURST_SECONDS = 5.0
_PRUNE_AT = 4096  # buckets kept before the full (idle) ones are dropped


class _Buckets:
    def __init__(self):
        self._lock = threading.Lock()
        self._buckets: dict[tuple, tuple[float, float]] = {}  # name -> (tokens, at)
        self._prune_at = _PRUNE_AT

    def take(self, limits: dict[tuple, float], now: float) -> float:
        """One token from every named bucket, or none from any: 0, or the seconds until
        every one of them has a token again."""
        with self._lock:
            levels = {}
            for name, rate in limits.items():
                tokens, at = self._buckets.get(name, (rate * BURST_SECONDS, now))
                levels[name] = min(rate * BURST_SECONDS, tokens + (now - at) * rate)
            short = [(1 - levels[name]) / rate for name, rate in limits.items()
                     if levels[name] < 1]
            if short:
                return max(short)
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            for name, level in levels.items():
                self._buckets[name] = (level - 1, now)
            return 0.0

    def _prune(self, now: float) -> None:
        # A bucket idle for its refill time is full again: forgetting it changes nothing.
        self._buckets = {name: (tokens, at) for name, (tokens, at) in self._buckets.items()
                         if now - at < BURST_SECONDS}
        # With more buckets busy than the bound, the next pass waits until as many again
        # are added: not a pass over all of them on every poll.
        self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()


buckets = _Buckets()


_clock = time.monotonic  # tests move it


def poll_rate_take(*, key, action: bool = False) -> None:
    """Count one poll by `key` (an ApiKey); raise 429 `rate_limited` past either limit.
    `action`: an approval or a cancel, counted in the same buckets (a request about one work
    item, like a poll; a loop of them would hold the process's slots the same way)."""
    limits = {}
    if settings.AUXOT_POLL_RATE_PER_KEY > 0:
        limits[("key", key.pk)] = float(settings.AUXOT_POLL_RATE_PER_KEY)
    if settings.AUXOT_POLL_RATE_PER_ORG > 0:
        limits[("org", key.org_id)] = float(settings.AUXOT_POLL_RATE_PER_ORG)
    if not limits:
        return
    wait = buckets.take(limits, _clock())
    if wait:
        seconds = max(1, math.ceil(wait))
        limits_said = (f"at most {settings.AUXOT_POLL_RATE_PER_KEY} per key and "
                       f"{settings.AUXOT_POLL_RATE_PER_ORG} per organization")
        detail = (
            "Too many requests about work items a second from this key or its organization "
            f"to this server (approvals and cancels count with polls: {limits_said}); retry "
            f"in {seconds} s." if action else
            "Too many polls a second from this key or its organization to this server "
            f"({limits_said}); retry in {seconds} s, or long-poll with ?wait=N, which answers "
            "when the item finishes.")
        raise ApplicationError(detail, code="rate_limited",
                               headers={"Retry-After": str(seconds)})
