"""Fleet-wide gauges read from the database at scrape time (the same on every host:
aggregate them with max(), not sum()). No label carries an id or a tenant's name."""

import logging

from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from auxot.broker import broker_get
from intakes.models import CallbackDelivery
from intakes.ops.checks import heartbeat_age, oldest_due_age
from workflows.models import ProviderTicket, WorkItem

logger = logging.getLogger(__name__)


def _gauge(name: str, doc: str, value: float | None, labels: list[str] | None = None,
           series: dict | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    if series is not None:
        for key, count in series.items():
            family.add_metric(list(key), count)
    elif value is not None:
        family.add_metric([], value)
    return family


def _work_items() -> list[GaugeMetricFamily]:
    rows = (WorkItem.objects.filter(status__in=WorkItem.ACTIVE)
            .values_list("status", "waiting_on").annotate(n=Count("pk")).order_by())
    by_status = {(s,): 0 for s in WorkItem.ACTIVE}
    waiting = {(w,): 0 for w in WorkItem.Waiting.values}
    for status, waiting_on, n in rows:
        by_status[(status,)] += n
        if waiting_on in WorkItem.Waiting.values:
            waiting[(waiting_on,)] += n
    return [
        _gauge("auxot_work_items", "Work items not yet finished, by status.", None,
               ["status"], by_status),
        _gauge("auxot_work_items_waiting", "Running work items parked, by what they wait on.",
               None, ["waiting_on"], waiting),
    ]


def _queues(now) -> list[GaugeMetricFamily]:
    tickets = ProviderTicket.objects.aggregate(
        held=Count("pk", filter=Q(granted_at__isnull=False, lease_until__gt=now)),
        queued=Count("pk", filter=Q(granted_at__isnull=True) | Q(lease_until__lte=now)))
    deliveries = CallbackDelivery.objects.filter(next_attempt_at__isnull=False).aggregate(
        n=Count("pk"), due=Min("next_attempt_at", filter=Q(next_attempt_at__lte=now)))
    due_age = (now - deliveries["due"]).total_seconds() if deliveries["due"] else 0.0
    beat = heartbeat_age(now)
    return [
        _gauge("auxot_oldest_pending_age_seconds", "How long the oldest due but unclaimed "
               "work item has waited for a worker (0: none).", oldest_due_age(now)),
        _gauge("auxot_provider_slots_in_use", "Agent provider slots held (all providers).",
               tickets["held"]),
        _gauge("auxot_provider_queue_length", "Work items waiting for a provider slot.",
               tickets["queued"]),
        _gauge("auxot_callback_deliveries_pending", "Callback deliveries not yet settled.",
               deliveries["n"]),
        _gauge("auxot_callback_oldest_due_age_seconds", "How long the oldest due callback "
               "delivery has waited (0: none).", max(due_age, 0.0)),
        _gauge("auxot_worker_heartbeat_age_seconds", "Seconds since the newest worker "
               "heartbeat (absent: none ever).", beat),
    ]


def _broker() -> GaugeMetricFamily:
    return _gauge("auxot_broker_depth", "Messages waiting on the django-q2 broker.",
                  broker_get().queue_size())


class StateCollector:
    """Runs a handful of indexed queries per scrape; a failing part reports itself in
    auxot_metrics_collect_errors instead of failing the whole scrape."""

    def collect(self):
        now = timezone.now()
        errors = 0
        for part in (_work_items, lambda: _queues(now), lambda: [_broker()]):
            try:
                yield from part()
            except Exception as exc:  # the class name only: messages may carry hosts
                errors += 1
                logger.warning("metrics collection failed: %s", type(exc).__name__)
        yield _gauge("auxot_metrics_collect_errors", "Parts of the database-backed metrics "
                     "that failed on this scrape.", errors)
