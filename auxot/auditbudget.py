"""Per-process, per-minute write budgets for audit rows that anyone can cause without a
credential: an intake's rejections (`intake.rejected`) and the admin's failed sign-ins
(`user.login_failed`). A flood of either costs a few rows a minute, not a row a request:
past the budget a source's rows are counted, and the count is written as `suppressed` in
that source's next row. Thread-safe (gunicorn gthread workers).
"""

import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable

# Sources whose suppressed count is kept until their next row: one caller with many
# addresses must not grow it without end (past it a new source's count is not kept).
SUPPRESSED_SOURCES_MAX = 10_000


def budget_source(ip: str | None) -> str | None:
    """Whose budget a row uses: the IP, or an IPv6 address's /64 (anyone with IPv6 holds a
    /64 of addresses: one host's share)."""
    if ip is None or ":" not in ip:
        return ip
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class AuditBudget:
    """At most `per_minute()` rows a minute overall and `per_source()` per source (both read
    on every call: settings a test or an operator changes apply at once)."""

    def __init__(self, *, per_minute: Callable[[], int], per_source: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute, self._per_source_limit, self.clock = per_minute, per_source, clock
        self._lock = threading.Lock()
        self._minute = -1
        self._total = 0
        self._per_source: Counter = Counter()
        self._suppressed: Counter = Counter()

    def take(self, source: Hashable) -> int | None:
        """The number suppressed since the last row for `source`, or None: over budget."""
        minute = int(self.clock() // 60)
        with self._lock:
            if minute != self._minute:
                self._minute, self._total = minute, 0
                self._per_source.clear()
            if (self._total >= self._per_minute()
                    or self._per_source[source] >= self._per_source_limit()):
                if source in self._suppressed or len(self._suppressed) < SUPPRESSED_SOURCES_MAX:
                    self._suppressed[source] += 1
                return None
            self._total += 1
            self._per_source[source] += 1
            return self._suppressed.pop(source, 0)

    def reset(self) -> None:
        with self._lock:
            self._minute = -1
            self._suppressed.clear()
