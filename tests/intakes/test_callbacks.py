"""Callback delivery against a real HTTP receiver: signing, retries, stops, the poll block."""

import json
import socket
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug import Response

from auxot.models import AuditEvent
from intakes.callbacks import (
    callback_deliveries_sweep,
    callback_deliveries_wake,
    callback_delivery_create,
    callback_delivery_process,
    callback_delivery_redeliver,
)
from intakes.models import CallbackAttempt, CallbackDelivery, Intake
from intakes.services import intake_create, intake_update
from tests.callback_helpers import finished_item
from tests.conftest import bearer, trigger
from tests.processes import settings_printed, wait_for
from workflows.batch import work_item_process

pytestmark = pytest.mark.django_db


def _deliver(item) -> CallbackDelivery:
    delivery = callback_delivery_create(work_item=item)
    callback_delivery_process(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _requests(receiver):
    return [request for request, _ in receiver.log]


def _due_now(delivery) -> None:
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def test_delivery_is_signed_and_verifies_with_the_receivers_secret(receiver, cb_intake):
    receiver.expect_request("/hook").respond_with_data("thanks")
    item = finished_item(cb_intake)
    delivery = _deliver(item)
    assert delivery.state == "delivered" and delivery.last_status == 200
    [request] = _requests(receiver)
    assert request.args["token"] == "s3"
    assert request.headers["Content-Type"] == "application/json"
    body = Webhook(cb_intake.signing_secret).verify(request.get_data(), dict(request.headers))
    assert request.headers["webhook-id"] == delivery.webhook_id
    assert body["work_id"] == str(item.pk) and body["status"] == "completed"
    assert body["output"] == {"echo": {"n": 1}}
    assert body["callback"]["state"] == "delivering" and body["callback"]["attempts"] == 1
    assert "token=REDACTED" in body["callback"]["url"] and "s3" not in body["callback"]["url"]


def test_callback_body_is_the_poll_body(api, receiver, cb_intake, member_token):
    receiver.expect_request("/hook").respond_with_data("ok")
    item = finished_item(cb_intake)
    _deliver(item)
    sent = json.loads(_requests(receiver)[0].get_data())
    polled = api.get(f"/v1/intake/{cb_intake.pk}/work/{item.pk}", **bearer(member_token)).json()
    assert polled["callback"]["state"] == "delivered" and polled["callback"]["last_status"] == 200
    sent.pop("callback"), polled.pop("callback")
    assert sent == polled


def test_tampered_body_and_stale_timestamp_fail_verification(receiver, cb_intake):
    receiver.expect_request("/hook").respond_with_data("ok")
    _deliver(finished_item(cb_intake))
    [request] = _requests(receiver)
    headers, data = dict(request.headers), request.get_data()
    verifier = Webhook(cb_intake.signing_secret)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(data.replace(b'"n":1', b'"n":2'), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(data, headers)  # another secret
    with time_machine.travel(timezone.now() + timedelta(minutes=10)), \
            pytest.raises(WebhookVerificationError, match="too old"):
        verifier.verify(data, headers)


def test_failure_then_retry_then_success_records_every_attempt(receiver, cb_intake, settings):
    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 60, 60]  # "not due yet" holds on a slow box
    receiver.expect_oneshot_request("/hook").respond_with_data("busy", status=503)
    receiver.expect_request("/hook").respond_with_data("ok")
    item = finished_item(cb_intake)
    delivery = _deliver(item)
    assert delivery.state == "pending" and delivery.last_status == 503
    assert delivery.next_attempt_at > timezone.now()  # schedule[1] = 60 s
    assert callback_delivery_process(delivery_id=delivery.pk) is None  # not due yet
    with time_machine.travel(delivery.next_attempt_at + timedelta(milliseconds=50)):
        assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    first, second = _requests(receiver)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.webhook_id
    attempts = list(CallbackAttempt.objects.filter(delivery=delivery))
    assert [(a.number, a.status_code, a.response_body) for a in attempts] == [
        (1, 503, "busy"), (2, 200, "ok")]
    assert all(a.latency_ms is not None and a.finished_at for a in attempts)
    assert "s3" not in attempts[0].url and "token=REDACTED" in attempts[0].url
    item.refresh_from_db()
    assert item.status == "completed"  # a callback's fate never changes the item


@pytest.mark.parametrize("status", [200, 500])
def test_an_answer_with_nul_bytes_is_recorded(receiver, cb_intake, status):
    # A hostile receiver: PostgreSQL cannot store NUL in text, and an outcome that cannot be
    # recorded would be claimed again and again.
    receiver.expect_request("/hook").respond_with_data(b"ok\x00\xff\x00", status=status)
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == ("delivered" if status == 200 else "pending")
    [attempt] = CallbackAttempt.objects.filter(delivery=delivery)
    assert (attempt.status_code, attempt.response_body) == (status, "ok\ufffd\ufffd\ufffd")


def test_attempts_run_out_and_the_delivery_fails(receiver, cb_intake, settings):
    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 0]
    receiver.expect_request("/hook").respond_with_data("no", status=500)
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == "pending"
    callback_delivery_process(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == "failed" and delivery.next_attempt_at is None
    assert "no attempts left" in delivery.last_error
    assert delivery.attempts == 2


def test_410_stops_and_disables_the_intakes_callback(api, receiver, cb_intake, member_token):
    receiver.expect_request("/hook").respond_with_data("gone", status=410)
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == "disabled" and delivery.next_attempt_at is None
    cb_intake.refresh_from_db()
    assert cb_intake.callback_disabled_at is not None
    assert "410" in cb_intake.callback_disabled_reason
    event = AuditEvent.objects.get(event="intake.callback_disabled")
    assert event.object_id == str(cb_intake.pk)
    # Later items of this intake are not sent while it is disabled.
    later = finished_item(cb_intake)
    assert callback_delivery_create(work_item=later).state == "disabled"
    polled = api.get(f"/v1/intake/{cb_intake.pk}/work/{later.pk}", **bearer(member_token))
    assert polled.json()["callback"]["state"] == "disabled"
    assert len(_requests(receiver)) == 1


def test_410_on_a_per_request_url_stops_only_that_delivery(receiver, cb_intake):
    # A caller's own URL must not switch off the intake's callback for everyone else.
    receiver.expect_request("/mine").respond_with_data("gone", status=410)
    item = finished_item(cb_intake, callback_url=receiver.url_for("/mine"))
    delivery = _deliver(item)
    assert delivery.state == "failed"
    cb_intake.refresh_from_db()
    assert cb_intake.callback_disabled_at is None


def test_redirect_is_a_failure_and_is_not_followed(receiver, cb_intake):
    receiver.expect_request("/hook").respond_with_data(
        "", status=302, headers={"Location": receiver.url_for("/elsewhere")})
    receiver.expect_request("/elsewhere").respond_with_data("ok")
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == "pending" and delivery.last_status == 302
    assert "redirects are not followed" in delivery.last_error
    assert [r.path for r in _requests(receiver)] == ["/hook"]


def test_slow_receiver_times_out_and_is_retried(receiver, cb_intake, settings):
    settings.AUXOT_CALLBACK_TIMEOUT_SECONDS = 0.3

    def slow(request):
        time.sleep(1.0)
        return Response("late")

    receiver.expect_request("/hook").respond_with_handler(slow)
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == "pending" and delivery.next_attempt_at is not None
    attempt = CallbackAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None and attempt.error == "timed out after 0.3 s"
    # The handler sleeps on after the client gave up, and the receiver logs a request only
    # when its handler returns: wait here, or it would show up in a later test's log.
    wait_for(lambda: len(_requests(receiver)) == 1, timeout=5, what="the slow handler")


def test_retry_after_is_honoured_and_capped(receiver, cb_intake, settings):
    settings.AUXOT_CALLBACK_RETRY_AFTER_MAX_SECONDS = 120
    receiver.expect_oneshot_request("/hook").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "60"})
    receiver.expect_request("/hook").respond_with_data(
        "down", status=503, headers={"Retry-After": "99999"})
    before = timezone.now()
    first = _deliver(finished_item(cb_intake))
    assert timedelta(seconds=59) < first.next_attempt_at - before < timedelta(seconds=65)
    second = _deliver(finished_item(cb_intake))
    assert timedelta(seconds=119) < second.next_attempt_at - before < timedelta(seconds=125)


def test_abort_message_header_stops_retries(receiver, cb_intake):
    receiver.expect_request("/hook").respond_with_data(
        "bad", status=400, headers={"webhook-delivery": "abort-message"})
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == "failed" and delivery.next_attempt_at is None
    assert "abort-message" in delivery.last_error


def test_a_claimed_delivery_is_not_sent_twice(receiver, cb_intake):
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    # Another worker holds the lease (claimed, not finished): a second run must not send.
    CallbackDelivery.objects.filter(pk=delivery.pk).update(
        state="delivering", lease_token="other",
        next_attempt_at=timezone.now() + timedelta(seconds=30))
    assert callback_delivery_process(delivery_id=delivery.pk) is None
    assert _requests(receiver) == []


def test_an_expired_lease_is_retried_with_the_same_webhook_id(receiver, cb_intake):
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    CallbackDelivery.objects.filter(pk=delivery.pk).update(
        state="delivering", lease_token="dead", attempts=1, next_attempt_at=timezone.now())
    CallbackAttempt.objects.create(delivery=delivery, number=1, started_at=timezone.now(),
                                   url="x")
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    first, second = CallbackAttempt.objects.filter(delivery=delivery)
    assert first.error.startswith("interrupted") and second.status_code == 200
    assert _requests(receiver)[0].headers["webhook-id"] == delivery.webhook_id


def test_tick_wakes_due_deliveries_once(cb_intake, receiver):
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    CallbackDelivery.objects.filter(pk=delivery.pk).update(enqueued_at=None)
    assert callback_deliveries_wake() == 1
    assert callback_deliveries_wake() == 0  # enqueued, not yet run: no duplicate


def test_redeliver_now_makes_a_new_attempt_with_the_same_webhook_id(receiver, cb_intake, cast):
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = _deliver(finished_item(cb_intake))
    assert callback_delivery_redeliver(delivery=delivery, actor=cast.admin_a)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    ids = {r.headers["webhook-id"] for r in _requests(receiver)}
    assert ids == {delivery.webhook_id} and len(_requests(receiver)) == 2
    assert AuditEvent.objects.filter(event="callback.redelivered").count() == 1


@pytest.mark.parametrize("change", ["moved", "removed"])
def test_redeliver_after_the_intakes_url_changed_since_the_delivery_was_read_follows_it(
        receiver, cb_intake, cast, change):
    """The admin's selection was read, then another admin moved (or removed) the intake's
    callback URL before the redeliver wrote: the resend goes where callbacks go now, or
    nowhere; never to the URL the admin moved away from."""
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = CallbackDelivery.objects.select_related("intake__org").get(
        pk=_deliver(finished_item(cb_intake)).pk)
    new_url = receiver.url_for("/moved") if change == "moved" else ""
    intake_update(intake=Intake.objects.get(pk=cb_intake.pk), changes={"callback_url": new_url})
    redelivered = callback_delivery_redeliver(delivery=delivery, actor=cast.admin_a)
    delivery.refresh_from_db()
    if change == "moved":
        assert redelivered and (delivery.state, delivery.url) == ("pending", new_url)
    else:
        assert not redelivered and delivery.state == "delivered"
        assert not AuditEvent.objects.filter(event="callback.redelivered").exists()


def _while_the_intakes_url_change_commits(cb_intake, receiver, monkeypatch, action) -> str:
    """Run `action` in a thread while an admin's change of the intake's callback URL is
    written (its waiting deliveries moved) but not committed; release the change once
    `action` waits on a lock (or is done). Returns the new URL."""
    import threading

    import intakes.services as intake_services

    holding, release = threading.Event(), threading.Event()
    real = intake_services.callback_deliveries_retarget

    def retarget_then_hold(**kwargs):
        moved = real(**kwargs)
        holding.set()  # the intake's new URL is written, not yet committed
        assert release.wait(30)
        return moved

    monkeypatch.setattr(intake_services, "callback_deliveries_retarget", retarget_then_hold)
    new_url = receiver.url_for("/moved")

    def run(call):
        try:
            call()
        finally:
            connection.close()

    editor = threading.Thread(target=run, args=(lambda: intake_update(
        intake=Intake.objects.get(pk=cb_intake.pk), changes={"callback_url": new_url}),))
    editor.start()
    assert holding.wait(30)
    actor = threading.Thread(target=run, args=(action,))
    actor.start()
    for _ in range(3000):  # until the action waits on the intake's lock, or is done
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND wait_event_type = 'Lock'")
            if cursor.fetchone()[0] or not actor.is_alive():
                break
        time.sleep(0.01)
    release.set()
    editor.join(30)
    actor.join(30)
    return new_url


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_redeliver_while_the_intakes_url_change_commits_waits_and_follows_it(
        receiver, cb_intake, cast, monkeypatch):
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = CallbackDelivery.objects.select_related("intake__org").get(
        pk=_deliver(finished_item(cb_intake)).pk)
    new_url = _while_the_intakes_url_change_commits(
        cb_intake, receiver, monkeypatch,
        lambda: callback_delivery_redeliver(delivery=delivery, actor=cast.admin_a))
    delivery.refresh_from_db()
    assert (delivery.state, delivery.url) == ("pending", new_url)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["batch", "one"])
def test_a_delivery_created_while_the_intakes_url_change_commits_goes_to_the_new_url(
        receiver, cb_intake, cast, monkeypatch, path):
    """An item finishes as an admin moves the intake's callbacks: its delivery, written
    while the change (which moves the waiting deliveries) is uncommitted, waits for it and
    goes to the new URL, not to the one the admin moved away from."""
    from intakes.callbacks import callback_deliveries_create

    item = finished_item(cb_intake)
    CallbackDelivery.objects.all().delete()  # as if the finish signal had not run yet
    item = type(item).objects.select_related("intake").get(pk=item.pk)
    create = (lambda: callback_deliveries_create(work_items=[item])) if path == "batch" else (
        lambda: callback_delivery_create(work_item=item))
    new_url = _while_the_intakes_url_change_commits(cb_intake, receiver, monkeypatch, create)
    assert CallbackDelivery.objects.get(work_item=item).url == new_url


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
def test_a_batch_without_callbacks_locks_no_intake(receiver, cb_intake, cast):
    """The lock above is for items that call back: the engine's common batch, whose items
    have no callback, reads its intakes as before, without a row lock (a FOR SHARE per batch
    is a write to the intake's row, and concurrent ones a MultiXact)."""
    from django.test.utils import CaptureQueriesContext

    from intakes.callbacks import callback_deliveries_create

    quiet = finished_item(intake_create(org=cast.org_a, workflow=cb_intake.workflow,
                                        name="No callback", created_by=cast.admin_a))
    calling = finished_item(cb_intake)
    CallbackDelivery.objects.all().delete()
    for items, locks in (([quiet], 0), ([quiet, calling], 1)):
        with CaptureQueriesContext(connection) as captured:
            callback_deliveries_create(work_items=items)
        assert sum("FOR SHARE" in q["sql"] for q in captured.captured_queries) == locks
    assert list(CallbackDelivery.objects.values_list("work_item", flat=True)) == [calling.pk]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_redeliver_while_an_attempt_is_in_flight_changes_nothing_and_sends_nothing_twice(
        receiver, cb_intake, cast):
    """The dispatcher's attempt is waiting for the receiver when an admin clicks "Redeliver
    now": refused (in flight), no audit row; the attempt ends as it would have, once; a
    redeliver after it is a second attempt with the same webhook-id."""
    import threading

    from werkzeug import Response as Answer

    posted, answer = threading.Event(), threading.Event()

    def slow(request):
        posted.set()
        assert answer.wait(30)
        return Answer("ok")

    receiver.expect_request("/hook").respond_with_handler(slow)
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    result = {}

    def send():
        try:
            result["state"] = callback_delivery_process(delivery_id=delivery.pk)
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    assert posted.wait(30)
    stale = CallbackDelivery.objects.select_related("intake__org").get(pk=delivery.pk)
    assert not callback_delivery_redeliver(delivery=stale, actor=cast.admin_a)
    answer.set()
    sender.join(30)
    assert result["state"] == "delivered"
    assert CallbackAttempt.objects.filter(delivery=delivery).count() == 1
    assert not AuditEvent.objects.filter(event="callback.redelivered").exists()
    assert callback_delivery_redeliver(delivery=stale, actor=cast.admin_a)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    assert {r.headers["webhook-id"] for r in _requests(receiver)} == {delivery.webhook_id}
    assert len(_requests(receiver)) == 2


def test_delivery_is_created_once_per_item(cb_intake, receiver):
    item = finished_item(cb_intake)
    assert callback_delivery_create(work_item=item) == callback_delivery_create(work_item=item)
    assert CallbackDelivery.objects.count() == 1


def test_item_without_callback_url_gets_no_delivery(intake_a):
    from workflows.models import WorkItem
    item = WorkItem(intake=intake_a, workflow=intake_a.workflow, status="completed")
    assert callback_delivery_create(work_item=item) is None


def test_connection_errors_are_stored_without_query_secrets(cb_intake, receiver):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    url = f"http://127.0.0.1:{port}/hook?token=topsecret"
    delivery = _deliver(finished_item(cb_intake, callback_url=url))
    attempt = CallbackAttempt.objects.get(delivery=delivery)
    assert attempt.error.startswith("connection failed") and delivery.state == "pending"
    assert "topsecret" not in attempt.error + attempt.url + delivery.last_error


def test_sweep_creates_a_delivery_the_finished_signal_missed(cb_intake, receiver):
    item = finished_item(cb_intake)
    assert callback_deliveries_sweep() == 0  # just finished: the signal's job
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        assert callback_deliveries_sweep() == 1
        assert callback_deliveries_sweep() == 0
    assert CallbackDelivery.objects.get().work_item_id == item.pk


def test_setting_a_callback_url_sends_nothing_for_work_that_finished_before(
        api, cb_intake, member_token, receiver):
    """Tutorial order: trigger, poll, then set the intake's Callback URL. The work that had
    finished without one gets no callback (the sweep sent the whole last day's), and its
    poll says so; work that finishes from then on gets one."""
    intake_update(intake=cb_intake, changes={"callback_url": ""})
    before = finished_item(cb_intake)
    assert not CallbackDelivery.objects.exists()
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        intake_update(intake=Intake.objects.get(pk=cb_intake.pk),
                      changes={"callback_url": receiver.url_for("/hook")})
        after = finished_item(cb_intake)
        CallbackDelivery.objects.all().delete()  # as if the finished signal had been missed
    with time_machine.travel(timezone.now() + timedelta(seconds=60)):
        assert callback_deliveries_sweep() == 1
        assert callback_deliveries_sweep() == 0
    assert CallbackDelivery.objects.get().work_item_id == after.pk
    polled = api.get(f"/v1/intake/{cb_intake.pk}/work/{before.pk}", **bearer(member_token))
    assert polled.json()["callback"] is None


def test_a_changed_callback_url_still_sweeps_work_that_finished_under_the_old_one(cb_intake,
                                                                                  receiver):
    item = finished_item(cb_intake)
    CallbackDelivery.objects.all().delete()  # the finished signal was missed
    intake_update(intake=cb_intake, changes={"callback_url": receiver.url_for("/new")})
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        assert callback_deliveries_sweep() == 1
    delivery = CallbackDelivery.objects.get()
    assert delivery.work_item_id == item.pk and delivery.url.endswith("/new")


def test_poll_with_a_callback_costs_no_more_query(api, cb_intake, member_token, receiver,
                                                  django_assert_num_queries):
    work_id = trigger(api, cb_intake.pk, member_token).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    # key with the intake (one SELECT); intake, item and its delivery in one;
    # steps with their attempts
    with django_assert_num_queries(3):
        body = api.get(f"/v1/intake/{cb_intake.pk}/work/{work_id}", **bearer(member_token))
    assert body.json()["callback"]["state"] == "pending"


def test_intake_without_a_secret_sends_nothing_and_retries(cb_intake, receiver):
    Intake.objects.filter(pk=cb_intake.pk).update(signing_secret_encrypted="")
    delivery = _deliver(finished_item(cb_intake))
    assert delivery.state == "pending" and "no signing secret" in delivery.last_error
    assert _requests(receiver) == []


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_one_due_delivery_send_it_once(cb_intake, receiver):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def slow_ok(request):
        time.sleep(0.3)
        return Response("ok")

    receiver.expect_request("/hook").respond_with_handler(slow_ok)
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))

    def work(_):
        try:
            return callback_delivery_process(delivery_id=delivery.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    assert results.count(None) == 3 and "delivered" in results
    assert len(_requests(receiver)) == 1
    assert CallbackAttempt.objects.filter(delivery=delivery).count() == 1


def test_a_receiver_dribbling_its_answer_hits_the_total_timeout(cb_intake, settings):
    import threading

    settings.AUXOT_CALLBACK_TIMEOUT_SECONDS = 0.5
    server = socket.create_server(("127.0.0.1", 0))

    def dribble():  # every byte arrives within the read timeout; the whole never does
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    started = time.monotonic()
    delivery = _deliver(finished_item(cb_intake, callback_url=url))
    assert time.monotonic() - started < 3  # not the ~4.5 s the dribble would take
    assert delivery.state == "pending" and "timed out after 0.5 s" in delivery.last_error
    server.close()


@pytest.mark.parametrize(("env", "printed"), [({}, "5.0"),
                                              ({"AUXOT_CALLBACK_TIMEOUT_SECONDS": "12"}, "12.0")])
def test_a_receiver_has_5_s_to_answer_unless_the_operator_says_otherwise(env, printed):
    # Short on purpose: a hanging receiver delays its own item's next attempt by this much.
    done = settings_printed(env, "AUXOT_CALLBACK_TIMEOUT_SECONDS")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed
