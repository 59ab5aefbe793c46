"""What one attempt's outcome does to the rest: a 410 from a URL the intake no longer uses,
where the retries go when an admin changes the URL,
the other retries waiting on a URL that said 410, attempts that sent nothing (for the
breaker and for the count)."""

import pytest
from django.utils import timezone

from auxot.models import AuditEvent
from intakes.callbacks import (
    callback_attempt_finish,
    callback_attempt_post,
    callback_attempt_prepare,
    callback_deliveries_claim,
    callback_delivery_create,
    callback_delivery_process,
    endpoint_key,
)
from intakes.models import CallbackAttempt, CallbackDelivery, CallbackEndpoint, Intake
from intakes.services import intake_update
from tests.callback_helpers import finished_item

pytestmark = pytest.mark.django_db


def _due_now(delivery):
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def _paths(receiver):
    return [request.path for request, _ in receiver.log]


def _change_url(cb_intake, cast, url):
    intake_update(intake=Intake.objects.select_related("org").get(pk=cb_intake.pk),
                  actor=cast.admin_a, changes={"callback_url": url})


def test_a_410_for_an_attempt_begun_before_the_url_changed_does_not_disable_the_new_one(
        receiver, cb_intake, cast):
    """An attempt to the URL an admin replaced while it was being sent got 410 Gone: it
    disabled the intake's callback, and every later delivery to the new, healthy URL was
    created disabled and never sent."""
    receiver.expect_request("/hook").respond_with_data("gone", status=410)
    receiver.expect_request("/new-hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    [(claimed, token)] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    prepared = callback_attempt_prepare(delivery=claimed, token=token, now=timezone.now())
    _change_url(cb_intake, cast, receiver.url_for("/new-hook"))
    callback_attempt_finish(prepared=prepared, result=callback_attempt_post(prepared))
    cb_intake.refresh_from_db()
    assert cb_intake.callback_disabled_at is None
    later = callback_delivery_create(work_item=finished_item(cb_intake))
    assert later.state == "pending"
    assert callback_delivery_process(delivery_id=later.pk) == "delivered"
    assert _paths(receiver) == ["/hook", "/new-hook"]


def test_an_attempt_whose_item_retention_deleted_meanwhile_ends_quietly(receiver, cb_intake,
                                                                          caplog):
    """Retention deletes a finished item (with its delivery and the attempt's row) while the
    POST is in flight: recording the answer raised "did not affect any rows" and logged an
    error for what is no error. Nothing is recorded, nothing raised, no endpoint outcome."""
    from intakes.models import CallbackAttempt, CallbackEndpoint

    receiver.expect_request("/hook").respond_with_data("ok")
    item = finished_item(cb_intake)
    delivery = callback_delivery_create(work_item=item)
    [(claimed, token)] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    prepared = callback_attempt_prepare(delivery=claimed, token=token, now=timezone.now())
    result = callback_attempt_post(prepared)
    type(item).objects.filter(pk=item.pk).delete()  # as retention's delete does
    with caplog.at_level("ERROR"):
        assert callback_attempt_finish(prepared=prepared, result=result) == "delivered"
    assert not CallbackDelivery.objects.exists() and not CallbackAttempt.objects.exists()
    assert not CallbackEndpoint.objects.filter(consecutive_failures__gt=0).exists()
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


def test_a_changed_url_takes_the_waiting_retries_with_it(receiver, cb_intake, cast):
    """An admin fixes a wrong callback URL: the deliveries waiting for a retry kept posting
    to the old one for the rest of their schedule (about a day). They go to the new one
    from their next attempt, under the new URL's breaker; a caller's own URL to the same
    place, and another intake's deliveries, stay where they were."""
    receiver.expect_request("/hook").respond_with_data("busy", status=503)
    old_url = cb_intake.callback_url
    waiting = callback_delivery_create(work_item=finished_item(cb_intake))
    callback_delivery_process(delivery_id=waiting.pk)  # 503: a retry waits, for /hook
    callers = callback_delivery_create(work_item=finished_item(cb_intake, callback_url=old_url))
    sent = callback_delivery_create(work_item=finished_item(cb_intake))
    CallbackDelivery.objects.filter(pk=sent.pk).update(state="delivered", next_attempt_at=None)
    new_url = receiver.url_for("/new-hook")
    _change_url(cb_intake, cast, new_url)
    receiver.expect_request("/new-hook").respond_with_data("ok")
    for delivery in (waiting, callers, sent):
        delivery.refresh_from_db()
    assert (waiting.url, waiting.endpoint) == (new_url, endpoint_key(new_url, cast.org_a.pk))
    assert (callers.url, sent.url) == (old_url, old_url)
    _due_now(waiting)
    assert callback_delivery_process(delivery_id=waiting.pk) == "delivered"
    assert _paths(receiver) == ["/hook", "/new-hook"]
    changed = AuditEvent.objects.get(event="intake.changed", object_id=str(cb_intake.pk))
    assert changed.extra["deliveries_moved"] == 1


def test_removing_the_url_stops_the_waiting_retries(receiver, cb_intake, cast):
    receiver.expect_request("/hook").respond_with_data("busy", status=503)
    waiting = callback_delivery_create(work_item=finished_item(cb_intake))
    callback_delivery_process(delivery_id=waiting.pk)
    _change_url(cb_intake, cast, "")
    _due_now(waiting)
    assert callback_delivery_process(delivery_id=waiting.pk) is None  # not due: stopped
    waiting.refresh_from_db()
    assert (waiting.state, waiting.last_error) == (
        "disabled", "the intake's callback URL was removed")
    assert len(receiver.log) == 1


def test_a_410_stops_the_other_retries_waiting_on_that_url(receiver, cb_intake):
    receiver.expect_oneshot_request("/hook").respond_with_data("busy", status=503)
    first = callback_delivery_create(work_item=finished_item(cb_intake))
    callback_delivery_process(delivery_id=first.pk)  # 503: a retry waits
    receiver.expect_oneshot_request("/hook").respond_with_data("gone", status=410)
    second = callback_delivery_create(work_item=finished_item(cb_intake))
    assert callback_delivery_process(delivery_id=second.pk) == "disabled"
    receiver.expect_request("/hook").respond_with_data("ok")
    _due_now(first)
    assert callback_delivery_process(delivery_id=first.pk) is None  # not due: stopped
    first.refresh_from_db()
    assert (first.state, first.last_error) == ("disabled", "the intake's callback is disabled")
    assert len(receiver.log) == 2


def test_attempts_that_send_nothing_do_not_open_the_endpoints_breaker(receiver, cb_intake,
                                                                      settings):
    """An intake without a readable signing secret sends nothing (it is retried, so an admin
    can rotate it): those attempts said nothing of the host, but opened its breaker and
    paused the organization's other callbacks to it."""
    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 3
    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 0, 0, 0, 0]
    Intake.objects.filter(pk=cb_intake.pk).update(signing_secret_encrypted="")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    for _ in range(4):
        _due_now(delivery)
        assert callback_delivery_process(delivery_id=delivery.pk) == "pending"  # retried
    assert receiver.log == []
    assert not CallbackEndpoint.objects.filter(open_until__isnull=False).exists()
    assert not CallbackEndpoint.objects.filter(consecutive_failures__gt=0).exists()


@pytest.mark.django_db(transaction=True)
def test_a_delivery_given_back_unsent_keeps_its_attempt(receiver, cb_intake, settings):
    """SIGTERM between the claim and the attempt row: the dispatcher gives the delivery back
    unsent, but the claim's count stayed, so the first real attempt was numbered 2 and its
    retry came on the third step of the schedule (300 s, not 5 s)."""
    from intakes.dispatcher import Dispatcher

    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 5, 300]
    settings.AUXOT_CALLBACK_JITTER = 0
    receiver.expect_request("/hook").respond_with_data("busy", status=503)
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    dispatcher = Dispatcher(threads=4, per_host=4)
    dispatcher.run_once()  # claimed
    dispatcher.stop()  # stopping before the attempt row was written
    dispatcher.send_queued()  # given back
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, receiver.log) == ("pending", 0, [])
    assert callback_delivery_process(delivery_id=delivery.pk) == "pending"  # the 503
    delivery.refresh_from_db()
    assert list(CallbackAttempt.objects.filter(delivery=delivery).values_list(
        "number", flat=True)) == [1]
    assert 3 < (delivery.next_attempt_at - timezone.now()).total_seconds() <= 5


def test_callers_urls_failing_on_the_intakes_host_do_not_pause_the_intakes_callbacks(
        receiver, cb_intake, settings):
    """A key holder points Auxot-Callback-Url at a path of the intake's own receiver host
    that a proxy answers 502: the failures opened the (host, organization) breaker, and the
    intake's own deliveries to /hook were no longer sent. Callers' URLs have their own."""
    from intakes.dispatcher import Dispatcher

    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 3
    receiver.expect_request("/dead-upstream").respond_with_data("bad gateway", status=502)
    receiver.expect_request("/hook").respond_with_data("ok")
    for _ in range(3):
        delivery = callback_delivery_create(work_item=finished_item(
            cb_intake, callback_url=receiver.url_for("/dead-upstream")))
        assert callback_delivery_process(delivery_id=delivery.pk) == "pending"
    [opened] = CallbackEndpoint.objects.filter(open_until__isnull=False)
    assert "callers' URLs" in opened.key
    own = callback_delivery_create(work_item=finished_item(cb_intake))
    assert own.endpoint != opened.key
    dispatcher = Dispatcher(threads=4, per_host=4)
    dispatcher.run_once()
    dispatcher.send_queued()
    own.refresh_from_db()
    assert (own.state, own.attempts) == ("delivered", 1)
