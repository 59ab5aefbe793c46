"""Provider concurrency: a ticket per work item, granted in arrival order, leased.

A work item takes a ticket when its agent step first asks for the provider; `arrived_at`
fixes its place in line. A ticket is granted when fewer than `limit` tickets are held and
nobody who arrived earlier still waits. A held ticket carries a lease (the step's
timeout): a worker that is SIGKILLed never releases it, so an expired lease counts as free
and its item keeps its place at the front of the line for its next attempt.

Who is ahead is counted only as far as an answer needs: a look (`provider_slot_acquire`)
reads at most `limit` places to decide a grant, or as many as its caller's spacing of the
next look can tell apart (`ahead_counted`); the poll reads at most PROVIDER_AHEAD_SHOWN_MAX
places and says `ahead_at_least` past them. Each is one LIMITed read along the line's
index, so 50,000 items waiting cost a look no more than 50 do.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from workflows.models import Provider, ProviderTicket, WorkItem

# The most places ahead the poll counts; past them it shows this many, `ahead_at_least`.
PROVIDER_AHEAD_SHOWN_MAX = 1000


@dataclass
class Slot:
    granted: bool
    provider: str
    limit: int
    in_flight: int
    ahead: int
    ahead_at_least: bool = False  # the line was counted no further: `ahead` or more wait

    def detail(self) -> dict:
        detail = {"provider": self.provider, "limit": self.limit, "in_flight": self.in_flight,
                  "ahead": self.ahead}
        if self.ahead_at_least:
            detail["ahead_at_least"] = True
        return detail


def provider_find(*, org_id, name: str) -> Provider | None:
    return Provider.objects.filter(org_id=org_id, name=name, active=True).first()


def _held(provider: Provider, now: datetime):
    return ProviderTicket.objects.filter(provider=provider, granted_at__isnull=False,
                                         lease_until__gt=now)


def _ahead_of(ticket: ProviderTicket, now: datetime, *, at_most: int) -> tuple[int, bool]:
    """Tickets that arrived earlier and are not holding a live slot, counted up to
    `at_most`: (how many, whether more wait). One read of at most `at_most + 1` rows in
    line order (the `ticket_arrival` index), however long the line."""
    earlier = Q(arrived_at__lt=ticket.arrived_at) | Q(arrived_at=ticket.arrived_at,
                                                      pk__lt=ticket.pk)
    waiting = Q(granted_at__isnull=True) | Q(lease_until__lte=now)
    at_most = max(0, at_most)
    # `arrived_at <= …` on its own, besides `earlier`'s OR: the index's range ends at this
    # ticket, so the read stops there too (the front of a long line reads a few rows).
    counted = ProviderTicket.objects.filter(
        provider_id=ticket.provider_id, arrived_at__lte=ticket.arrived_at).filter(
        earlier, waiting).order_by("arrived_at", "pk").values("pk")[:at_most + 1].count()
    return min(counted, at_most), counted > at_most


def provider_slot_acquire(*, provider: Provider, work_id, now: datetime,
                          lease_seconds: int, ahead_counted: int = 0,
                          lease_token: str | None = None) -> Slot:
    """Take (or keep) the item's place in line and its slot, if fewer than `limit` are held
    and nobody earlier waits. Refused, the slot says who is ahead counted as far as
    `ahead_counted` (what the caller's next look's timing tells apart) or `limit`,
    whichever is more: `ahead_at_least` past it. With `lease_token`, only while that
    worker holds the item: a worker stalled past its lease while another took the item
    over gets no slot (it would call the provider beside the newer holder, on the newer
    holder's ticket) and makes no ticket (one made for an item finished meanwhile would
    stand in line forever)."""
    lease_until = now + timedelta(seconds=lease_seconds + settings.AUXOT_LEASE_GRACE_SECONDS)
    with transaction.atomic():
        # Serialize grants per provider (SQLite's IMMEDIATE transactions already do).
        Provider.objects.select_for_update().filter(pk=provider.pk).first()
        # The lease check is a compare-and-set on the token that locks the item's row until
        # this transaction ends: nobody takes the item over between the check and the ticket
        # written below (a separate read would let a claim come between). It renews the
        # item's lease to the slot's, so a holder granted a slot keeps the item as long.
        if lease_token is not None and WorkItem.objects.filter(
                pk=work_id, lease_token=lease_token).update(next_run_at=lease_until) != 1:
            return Slot(False, provider.name, provider.concurrency_limit, 0, 0)
        ticket, _ = ProviderTicket.objects.get_or_create(
            work_item_id=work_id, defaults={"provider": provider, "arrived_at": now})
        in_flight = _held(provider, now).exclude(pk=ticket.pk).count()
        free = provider.concurrency_limit - in_flight
        ahead, more = _ahead_of(ticket, now, at_most=max(free, ahead_counted))
        if ahead < free:
            ProviderTicket.objects.filter(pk=ticket.pk).update(
                granted_at=now, lease_until=lease_until)
            return Slot(True, provider.name, provider.concurrency_limit, in_flight + 1, 0)
    return Slot(False, provider.name, provider.concurrency_limit, in_flight, ahead, more)


def provider_slot_release(*, provider: Provider, work_id, now: datetime | None = None,
                          lease_token: str | None = None) -> None:
    """Give the slot back and wake the next items in line (the ticker enqueues them). With
    `lease_token`, only while that worker holds the item: the ticket of an item taken over
    is the newer holder's (one ticket per item), and deleting it would let one more item
    call the provider than its limit."""
    now = now or timezone.now()
    with transaction.atomic():
        tickets = ProviderTicket.objects.filter(work_item_id=work_id)
        if lease_token is not None:
            tickets = tickets.filter(work_item__lease_token=lease_token)
        if tickets.delete()[0] or lease_token is None:
            provider_wake_next(provider=provider, now=now)


def provider_wake_next(*, provider: Provider, now: datetime) -> int:
    free = provider.concurrency_limit - _held(provider, now).count()
    if free <= 0:
        return 0
    line = ProviderTicket.objects.filter(provider=provider).filter(
        Q(granted_at__isnull=True) | Q(lease_until__lte=now)).order_by("arrived_at", "pk")
    ids = list(line.values_list("work_item_id", flat=True)[:free])
    return WorkItem.objects.filter(pk__in=ids, waiting_on=WorkItem.Waiting.PROVIDER,
                                   lease_token="").update(next_run_at=now)


def provider_tickets_drop(*, work_id) -> None:
    """A finished or canceled item leaves the line (and frees its slot)."""
    ticket = ProviderTicket.objects.select_related("provider").filter(work_item_id=work_id).first()
    if ticket is not None:
        provider_slot_release(provider=ticket.provider, work_id=work_id)


def provider_position(*, work_id, now: datetime | None = None) -> dict | None:
    """For the poll: the item's provider, its limit, what is in flight and who is ahead."""
    now = now or timezone.now()
    ticket = ProviderTicket.objects.select_related("provider").filter(work_item_id=work_id).first()
    if ticket is None:
        return None
    provider = ticket.provider
    ahead, more = _ahead_of(ticket, now, at_most=PROVIDER_AHEAD_SHOWN_MAX)
    return Slot(False, provider.name, provider.concurrency_limit,
                _held(provider, now).count(), ahead, more).detail()


class ProviderGate:
    """The organization's providers as an agent step sees them, for one work item's attempt.

    The engine builds it and hands it to the step in its context, so step kinds never
    import the models.
    """

    def __init__(self, *, org_id, work_id, now: datetime, lease_seconds: int,
                 lease_token: str | None = None):
        self.org_id, self.work_id, self.now = org_id, work_id, now
        self.lease_seconds, self.lease_token = lease_seconds, lease_token

    def find(self, name: str) -> Provider | None:
        return provider_find(org_id=self.org_id, name=name)

    def acquire(self, provider: Provider, *, ahead_counted: int = 0) -> Slot:
        # The time of the look, not of the attempt's start: a worker that stalled between
        # the two would grant itself a slot whose lease had already run out (free to the next
        # item at once: one more call than the provider's limit).
        return provider_slot_acquire(provider=provider, work_id=self.work_id,
                                     now=timezone.now(),
                                     lease_seconds=self.lease_seconds,
                                     ahead_counted=ahead_counted,
                                     lease_token=self.lease_token)

    def release(self, provider: Provider) -> None:
        provider_slot_release(provider=provider, work_id=self.work_id,
                              lease_token=self.lease_token)
