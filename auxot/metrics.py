"""Prometheus plumbing shared by every process: the registry to render, and HTTP metrics.

With PROMETHEUS_MULTIPROC_DIR set (the same directory for gunicorn and qcluster on a host),
every process writes its counters and histograms to files there and any one process renders
the sum of all of them; without it, a process renders its own.
"""

import os

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_DURATION = Histogram(
    "auxot_http_request_duration_seconds", "Time the web process took to answer, by method "
    "and status class.", ["method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_observe(*, method: str, status: int, seconds: float) -> None:
    # A caller picks the method: an unknown one is folded, never a new series.
    HTTP_DURATION.labels(method=method if method in _METHODS else "other",
                         status=f"{status // 100}xx").observe(seconds)


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class _Local:
    """This process's default registry, as one collector of a combined registry."""

    def collect(self):
        yield from REGISTRY.collect()


def metrics_render(*collectors) -> bytes:
    """The text exposition of this host's process metrics plus `collectors` (scrape-time)."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(_Local())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
