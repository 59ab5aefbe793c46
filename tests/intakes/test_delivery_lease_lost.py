"""A sender whose lease on a delivery ran out (and another claimed it) sends and records nothing.

A dispatcher (or delivery task) stalled after its claim, past its lease, while another
dispatcher claimed the same delivery: it wrote its attempt row and POSTed anyway, so the
receiver had the callback twice (same webhook-id) and a success could be recorded twice.
The lease check and the attempt row are now one transaction (the check renews the lease
under the row lock), and an outcome is recorded (the delivery and the attempt row) only
under the lease: a late sender's row is the newer holder's to close as interrupted.
"""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from intakes import callbacks
from intakes.callbacks import (
    SendResult,
    callback_attempt_finish,
    callback_attempt_post,
    callback_attempt_prepare,
    callback_attempts_finish,
    callback_attempts_prepare,
    callback_deliveries_claim,
    callback_delivery_create,
    callback_delivery_send,
    lease_seconds,
)
from intakes.dispatcher import Dispatcher
from intakes.models import CallbackAttempt, CallbackDelivery
from tests.callback_helpers import finished_item

PAST_THE_LEASE = timedelta(hours=1)


def _rows(delivery):
    return list(CallbackAttempt.objects.filter(delivery=delivery).order_by("number")
                .values_list("number", "status_code", "error"))


def _late_and_new(receiver, cb_intake, time_machine):
    """A claims the delivery; its lease runs out; B claims it. Returns (A's, B's) claims."""
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    [late] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    [new] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    return late, new


def _prepare_single(claimed):
    return [callback_attempt_prepare(delivery=d, token=t, now=timezone.now())
            for d, t in claimed]


def _prepare_batch(claimed):
    return callback_attempts_prepare(claimed=claimed, now=timezone.now())


def _send_task(claimed):
    [(delivery, token)] = claimed
    return [callback_delivery_send(delivery=delivery, token=token, now=timezone.now())]


PREPARES = {"single": _prepare_single, "batch": _prepare_batch, "task": _send_task}


@pytest.mark.django_db
@pytest.mark.parametrize("prepare", PREPARES)
def test_a_late_sender_writes_no_attempt_row_and_sends_nothing(receiver, cb_intake,
                                                               time_machine, prepare):
    late, new = _late_and_new(receiver, cb_intake, time_machine)
    assert PREPARES[prepare]([late]) == [None]
    delivery = CallbackDelivery.objects.get(pk=late[0].pk)
    assert (delivery.lease_token, delivery.state) == (new[1], "delivering")
    assert _rows(delivery) == [] and receiver.log == []
    # The newer holder sends it once, as if the late one were not there.
    [prepared] = _prepare_batch([new])
    assert callback_attempt_finish(prepared=prepared,
                                   result=callback_attempt_post(prepared)) == "delivered"
    assert len(receiver.log) == 1
    assert _rows(delivery) == [(delivery.attempts, 200, "")]


@pytest.mark.django_db
def test_a_dispatcher_that_lost_its_claim_before_preparing_sends_nothing(
        receiver, cb_intake, time_machine):
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    late = Dispatcher(threads=2, per_host=2)
    late._hand_out([delivery.pk], timezone.now())  # claimed; its job not run yet
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    [new] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    assert late.send_queued() == 0 and late.in_flight == 0
    assert receiver.log == [] and _rows(delivery) == []
    assert CallbackDelivery.objects.get(pk=delivery.pk).lease_token == new[1]


def _finish_single(prepared, result):
    callback_attempt_finish(prepared=prepared, result=result)


def _finish_batch(prepared, result):
    callback_attempts_finish(outcomes=[(prepared, result)])


FINISHES = {"single": _finish_single, "batch": _finish_batch}
RESULTS = {"2xx": SendResult(status=200, latency_ms=5, body="ok"),
           "5xx": SendResult(status=503, latency_ms=5, body="down")}


@pytest.mark.django_db
@pytest.mark.parametrize("finish", FINISHES)
@pytest.mark.parametrize("result", RESULTS)
def test_a_late_senders_outcome_overwrites_nothing_of_the_newer_holder(
        receiver, cb_intake, time_machine, finish, result):
    """A's POST outlasted its lease and B claimed (marking A's open row interrupted): A's
    answer changes neither the delivery (B's lease, state, schedule) nor the rows."""
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    [late] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    [prepared_a] = _prepare_batch([late])
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    [new] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    [prepared_b] = _prepare_batch([new])
    before = CallbackDelivery.objects.filter(pk=delivery.pk).values().get()
    rows_before = _rows(delivery)
    assert rows_before[0][2].startswith("interrupted")
    FINISHES[finish](prepared_a, RESULTS[result])
    assert CallbackDelivery.objects.filter(pk=delivery.pk).values().get() == before
    assert _rows(delivery) == rows_before
    FINISHES[finish](prepared_b, SendResult(status=200, latency_ms=5, body="ok"))
    assert CallbackDelivery.objects.get(pk=delivery.pk).state == "delivered"
    assert [status for _n, status, _e in _rows(delivery)] == [None, 200]  # one success


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_a_claim_racing_a_late_senders_lease_check_waits_and_finds_it_held(
        receiver, cb_intake, monkeypatch, time_machine):
    """A's lease check (its lease run out, nobody claimed yet) and B's claim at once: A's
    check holds the row and renews the lease, so B claims nothing and one POST goes out."""
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    [late] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    later = timezone.now() + timedelta(seconds=lease_seconds() + 1)
    time_machine.move_to(later, tick=False)
    checked, go_on = threading.Event(), threading.Event()
    renew = callbacks._leases_renew

    def renew_then_wait(claimed, now):
        held = renew(claimed, now)
        checked.set()  # A holds the row here, its transaction open
        go_on.wait(10)
        return held

    monkeypatch.setattr(callbacks, "_leases_renew", renew_then_wait)
    out = {}

    def b_claims():
        checked.wait(10)
        try:
            out["b"] = callback_deliveries_claim(ids=[delivery.pk], now=later)
        finally:
            connection.close()

    thread = threading.Thread(target=b_claims)
    thread.start()
    checked.wait(10)
    threading.Timer(0.5, go_on.set).start()  # B is waiting on A's row lock by then
    [prepared] = _prepare_batch([late])
    thread.join(10)
    assert out["b"] == []
    callback_attempt_finish(prepared=prepared, result=callback_attempt_post(prepared))
    assert len(receiver.log) == 1
    assert CallbackDelivery.objects.get(pk=delivery.pk).state == "delivered"


def _claim_batch(pk, now):
    return callback_deliveries_claim(ids=[pk], now=now)[0]


def _claim_task(pk, now):
    return callbacks._claim(pk, now)


CLAIMS = {"batch": _claim_batch, "task": _claim_task}


@pytest.mark.django_db
@pytest.mark.parametrize("claim", CLAIMS)
def test_a_claim_lost_before_its_attempt_row_costs_no_number_and_no_retry(
        receiver, cb_intake, time_machine, claim):
    """A claimed (attempt 1 by the count of claims), stalled and lost the delivery before
    writing its row; B's claim is attempt 1 too, numbered from the rows written: no gap
    in the numbers, and the retry schedule (which counts `attempts`) lost no slot."""
    receiver.expect_request("/hook").respond_with_data("busy", status=503)
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    late = CLAIMS[claim](delivery.pk, timezone.now())
    time_machine.move_to(timezone.now() + PAST_THE_LEASE)
    new = CLAIMS[claim](delivery.pk, timezone.now())
    assert (late[0].attempts, new[0].attempts) == (1, 1)
    assert _prepare_batch([late]) == [None]
    [prepared] = _prepare_batch([new])
    assert callback_attempt_finish(prepared=prepared,
                                   result=callback_attempt_post(prepared)) == "pending"
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and [n for n, _s, _e in _rows(delivery)] == [1]
    # The next round is attempt 2, the next number: the lost claim left nothing behind.
    time_machine.move_to(delivery.next_attempt_at + timedelta(seconds=1))
    again = CLAIMS[claim](delivery.pk, timezone.now())
    assert again[0].attempts == 2
    [prepared] = _prepare_batch([again])
    callback_attempt_finish(prepared=prepared, result=callback_attempt_post(prepared))
    assert [n for n, _s, _e in _rows(delivery)] == [1, 2]


@pytest.mark.django_db
def test_a_delivery_given_back_counts_the_attempts_its_rows_number(receiver, cb_intake):
    """Given back after its row was written (the POST may have gone out), the attempt
    counts; given back by a holder whose lease was lost, nothing changes."""
    from intakes.callbacks import callback_delivery_release

    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    [claimed] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    _prepare_batch([claimed])
    assert callback_delivery_release(delivery_id=delivery.pk, token=claimed[1])
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert [n for n, _s, error in _rows(delivery) if error.startswith("interrupted")] == [1]
    [again] = callback_deliveries_claim(ids=[delivery.pk], now=timezone.now())
    assert again[0].attempts == 2
    assert not callback_delivery_release(delivery_id=delivery.pk, token=claimed[1])  # lost
    assert CallbackDelivery.objects.get(pk=delivery.pk).attempts == 2
