"""The poll body, and with it the callback body: one serializer for both."""

from django.conf import settings
from django.urls import reverse
from rest_framework.renderers import JSONRenderer

from auxot.outbound import url_redact
from auxot.timefmt import iso
from intakes.models import CallbackDelivery, Intake
from workflows.models import WorkItem
from workflows.presenters import WorkItemView, work_item_view


def callback_url_for(item: WorkItem, intake: Intake | None) -> str:
    """Where this item's callback goes: the per-request override, else the intake default."""
    return item.callback_url or (intake.callback_url if intake else "")


def callback_block(item: WorkItem, intake: Intake | None,
                   delivery: CallbackDelivery | None = None, *,
                   delivery_read: bool = False) -> dict | None:
    """`delivery_read`: the caller read the delivery with the item (None: there is none)."""
    if delivery is None:
        url = callback_url_for(item, intake)
        if not url:
            return None
        if not delivery_read:  # one query, only for items that have a callback at all
            delivery = CallbackDelivery.objects.filter(work_item_id=item.pk).first()
        if delivery is None:
            if not item.callback_url and _finished_before_url(item, intake):
                return None  # the intake got its URL after this item finished: none is sent
            disabled = intake is not None and intake.callback_disabled and not item.callback_url
            return {"url": url_redact(url), "state": "disabled" if disabled else "pending",
                    "attempts": 0, "next_attempt_at": None, "last_status": None}
    settled = delivery.state in (CallbackDelivery.State.DELIVERED, CallbackDelivery.State.FAILED,
                                 CallbackDelivery.State.DISABLED)
    return {
        "url": url_redact(delivery.url),
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": None if settled or delivery.state == "delivering"
        else iso(delivery.next_attempt_at),
        "last_status": delivery.last_status,
    }


def _finished_before_url(item: WorkItem, intake: Intake | None) -> bool:
    since = getattr(intake, "callback_url_set_at", None)
    return since is not None and item.finished_at is not None and item.finished_at < since


def work_item_poll_view(item: WorkItem, *, intake: Intake | None,
                        delivery: CallbackDelivery | None = None, delivery_read: bool = False,
                        replayed_by: list[str] | None = None,
                        progress: tuple[list, list] | None = None) -> WorkItemView:
    """The poll answer; once terminal, byte for byte what a callback delivers.

    With what the poll's first read brought along (the delivery, the replays), this costs
    one query: the step progress; none when `progress` is given too."""
    view = work_item_view(item, replayed_by=replayed_by, progress=progress)
    view.body["callback"] = callback_block(item, intake, delivery, delivery_read=delivery_read)
    for row in view.body["steps"]:
        if "carried_from" in row and item.intake_id:  # a link to the attempt that ran
            row["carried_from"]["url"] = work_item_url(item.intake_id,
                                                       row["carried_from"].get("work_id"))
    return view


def work_item_url(intake_id, work_id) -> str:
    path = reverse("work-item-detail", kwargs={"intake_id": intake_id, "work_id": work_id})
    return f"{settings.AUXOT_PUBLIC_BASE_URL}{path}"


def render_json(body: dict) -> bytes:
    return JSONRenderer().render(body)
