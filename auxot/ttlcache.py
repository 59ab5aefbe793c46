"""A tiny per-process cache whose entries live a few seconds: for values a hot read may
show slightly stale (the last worker heartbeat, a provider's queue position) instead of
querying them on every request. No network, no shared state between processes.
"""

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


class TtlCache:
    """`get(key, load)`: the value loaded at most `seconds` ago, else `load()` (and kept).

    Bounded: past `maxsize` entries the oldest half is dropped. Thread-safe; two threads
    that miss together may both load (harmless for reads).
    """

    def __init__(self, seconds: float, maxsize: int = 1024):
        self.seconds, self.maxsize = seconds, maxsize
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.seconds:
            return entry[1]
        value = load()
        self.put(key, value, at=now)
        return value

    def put(self, key: Hashable, value: Any, *, at: float | None = None) -> None:
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.maxsize:
                for old in sorted(self._entries, key=lambda k: self._entries[k][0])[
                        :max(1, self.maxsize // 2)]:
                    del self._entries[old]
            self._entries[key] = (time.monotonic() if at is None else at, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
