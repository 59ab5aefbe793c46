"""At most AUXOT_WEB_ACTIVE_REQUESTS requests of a process work at once; a long-poll gives
its slot back while it waits, so waiting long-polls never hold up a trigger."""

import threading

import pytest

from auxot import activerequests
from intakes import longpoll
from tests.conftest import bearer, trigger


def _in_slot(entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def work():
        with activerequests.slot_held():
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_requests_beyond_the_limit_wait_for_a_slot(settings):
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 2
    leave = threading.Event()
    first, second, third = threading.Event(), threading.Event(), threading.Event()
    threads = [_in_slot(first, leave), _in_slot(second, leave)]
    assert first.wait(10) and second.wait(10)
    threads.append(_in_slot(third, leave))
    assert not third.wait(0.3)  # both slots are taken: the third waits
    leave.set()
    assert third.wait(10)
    for thread in threads:
        thread.join(10)


def test_slots_are_reentrant_and_off_at_zero(settings):
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 1
    with activerequests.slot_held(), activerequests.slot_held():  # no self-deadlock
        pass
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 0
    with activerequests.slot_held(), activerequests.slot_released():
        pass


def test_a_released_slot_serves_another_request_and_comes_back(settings):
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 1
    other, leave = threading.Event(), threading.Event()
    with activerequests.slot_held():
        with activerequests.slot_released():
            thread = _in_slot(other, leave)
            assert other.wait(10)  # it got the slot this request gave back
            leave.set()
            thread.join(10)
        assert activerequests._slots[1]._value == 0  # held again
    assert activerequests._slots[1]._value == 1


def test_the_liveness_probe_answers_while_every_slot_is_taken(client, settings):
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 1
    entered, leave = threading.Event(), threading.Event()
    thread = _in_slot(entered, leave)
    assert entered.wait(10)
    try:
        answered = []
        probe = threading.Thread(target=lambda: answered.append(client.get("/healthz")),
                                 daemon=True)
        probe.start()
        probe.join(10)
        assert answered and answered[0].status_code == 200
    finally:
        leave.set()
        thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_a_waiting_long_poll_does_not_hold_up_a_trigger(api, intake_a, member_token, settings,
                                                       monkeypatch):
    settings.AUXOT_WEB_ACTIVE_REQUESTS = 1  # one working slot: the long-poll must give it back
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    waiting, finish = threading.Event(), threading.Event()

    def wait(item_id, seconds, owner=None, org=None, state=None):
        waiting.set()
        return finish.wait(30)

    monkeypatch.setattr(longpoll._watcher, "wait", wait)
    polled = []
    poller = threading.Thread(target=lambda: polled.append(api.get(
        f"/v1/intake/{intake_a.pk}/work/{work_id}", {"wait": 20}, **bearer(member_token))))
    poller.start()
    try:
        assert waiting.wait(10)
        answers = []
        thread = threading.Thread(target=lambda: answers.append(
            trigger(api, intake_a.pk, member_token).status_code))
        thread.start()
        thread.join(15)
        assert answers == [202], "the trigger waited behind a sleeping long-poll"
    finally:
        finish.set()
        poller.join(30)
    assert polled[0].status_code == 200
