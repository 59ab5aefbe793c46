"""Retention against the actions people take on the items it removes.

Retention deletes finished items (with their deliveries) while callers and operators may
hold them: read a moment before, then acted on. Every such action answers as it would
for the finished item it was (409, or the admin's message), never a 500, and leaves no
audit row or approval behind. Both orders are forced: the row gone before the action
looks (any database), and the action waiting on the row lock retention holds while it
deletes (PostgreSQL, two connections).
"""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.db import connection, connections
from django.utils import timezone

import intakes.admin_callbacks as admin_callbacks
import intakes.retention as retention_module
import workflows.services as workflow_services
from auxot.errors import ApplicationError
from auxot.models import AuditEvent
from intakes.callbacks import (
    callback_delivery_create,
    callback_delivery_process,
    callback_delivery_redeliver,
)
from intakes.models import CallbackDelivery
from intakes.retention import retention_run
from tests.callback_helpers import finished_item
from tests.conftest import bearer
from workflows.models import Approval, WorkItem
from workflows.services import work_item_cancel, work_item_decide

LATER = timedelta(days=400)  # past every default retention age
ACTION_EVENTS = {"work_item.canceled", "work_item.approved", "work_item.rejected",
                 "callback.redelivered"}


def _retention_deletes_everything() -> None:
    report = retention_run(now=timezone.now() + LATER)
    assert report.deleted >= 1 and not report.failed


def _delivered(cb_intake, receiver) -> CallbackDelivery:
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    return CallbackDelivery.objects.select_related("intake__org", "work_item").get(
        pk=delivery.pk)


def _api(action):
    def post(env):
        url = f"/v1/intake/{env['intake'].pk}/work/{env['item'].pk}/{action}"
        body = {"decision": "approve"} if action == "approval" else {}
        response = env["api"].post(url, body, format="json", **bearer(env["token"]))
        assert response.status_code == 409, response.content
        assert response.json()["code"] == "conflict"
    return post


def _admin_decide(env):
    client = env["client"]
    response = client.post(f"/admin/workflows/workitem/{env['item'].pk}/decide/",
                           {"decision": "reject"})
    assert response.status_code == 302
    shown = " ".join(str(m) for m in get_messages(response.wsgi_request))
    assert "retention policy has since deleted it" in shown


def _admin_redeliver(env):
    client = env["client"]
    page = client.post("/admin/intakes/callbackdelivery/", {
        "action": "redeliver_now", "_selected_action": [str(env["delivery"].pk)]}, follow=True)
    shown = " ".join(str(m) for m in page.context["messages"])
    assert "0 delivery(ies) queued" in shown
    assert "1 gone: the retention policy deleted them" in shown
    assert "in flight" not in shown


# Each action and the function it calls just before it takes the row: retention runs there.
ACTIONS = {
    "api cancel": (_api("cancel"), workflow_services, "_require_role"),
    "api approval": (_api("approval"), workflow_services, "_require_role"),
    "admin approve/reject": (_admin_decide, workflow_services, "_require_role"),
    "admin redeliver": (_admin_redeliver, admin_callbacks, "redeliver_refusal"),
}


@pytest.mark.parametrize("action", ACTIONS)
def test_an_action_on_an_item_retention_deleted_since_it_was_read_is_a_409_not_a_500(
        action, cast, cb_intake, receiver, api, member_token, client, monkeypatch):
    call, module, seam = ACTIONS[action]
    delivery = _delivered(cb_intake, receiver)
    real = getattr(module, seam)
    ran = []

    def then_retention(*args, **kwargs):
        result = real(*args, **kwargs)
        if not ran:
            ran.append(True)
            _retention_deletes_everything()
        return result

    monkeypatch.setattr(module, seam, then_retention)
    client.force_login(cast.admin_a)
    events = set(AuditEvent.objects.values_list("pk", flat=True))
    call({"intake": cb_intake, "item": delivery.work_item, "delivery": delivery, "api": api,
          "token": member_token, "client": client})
    assert ran, f"{action} never reached {seam}: the test proves nothing"
    assert not WorkItem.objects.exists() and not Approval.objects.exists()
    new = set(AuditEvent.objects.exclude(pk__in=events).values_list("event", flat=True))
    assert "work_items.deleted" in new and not new & ACTION_EVENTS


def _cancel(delivery, cast):
    work_item_cancel(item=delivery.work_item, user=cast.member_a)


def _approve(delivery, cast):
    work_item_decide(item=delivery.work_item, decision="approve", user=cast.member_a)


def _redeliver(delivery, cast):
    if callback_delivery_redeliver(delivery=delivery, actor=cast.admin_a):
        return "redelivered"
    raise ApplicationError("skipped", code="conflict")


def _waiting_on_a_lock() -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                       "current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0] > 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("act", [_cancel, _approve, _redeliver], ids=lambda f: f.__name__)
def test_an_action_waiting_on_the_row_retention_deletes_gets_409_not_500(
        act, cast, cb_intake, receiver, monkeypatch):
    """Retention has deleted the item's rows but not yet committed when the action asks for
    them: the action waits on retention's lock, then finds no row."""
    delivery = _delivered(cb_intake, receiver)
    holding, release = threading.Event(), threading.Event()
    real_audit = retention_module._audit

    def audit_then_hold(event, *args, **kwargs):
        real_audit(event, *args, **kwargs)
        if event == "work_items.deleted":
            holding.set()  # the batch is deleted, its transaction not yet committed
            assert release.wait(30)

    monkeypatch.setattr(retention_module, "_audit", audit_then_hold)
    outcome: dict = {}

    def run(name, call):
        try:
            outcome[name] = call()
        except Exception as exc:
            outcome[name] = exc
        finally:
            connection.close()

    sweeper = threading.Thread(target=run, args=("retention", _retention_deletes_everything))
    sweeper.start()
    assert holding.wait(30)
    actor = threading.Thread(target=run, args=("action", lambda: act(delivery, cast)))
    actor.start()
    for _ in range(3000):  # until the action waits on retention's lock (not a timing)
        if _waiting_on_a_lock() or not actor.is_alive():
            break
        time.sleep(0.01)
    release.set()
    sweeper.join(30)
    actor.join(30)
    assert outcome["retention"] is None
    refused = outcome["action"]
    assert isinstance(refused, ApplicationError) and refused.code == "conflict", refused
    assert not WorkItem.objects.exists() and not Approval.objects.exists()
    assert not AuditEvent.objects.filter(event__in=ACTION_EVENTS).exists()


# --- Redaction against callback attempts: no receiver's answer outlives the redaction -----
REDACT_ONLY = timedelta(days=40)  # past the payload age (30), not the item age (90)


def _redaction_pass() -> None:
    assert not retention_run(now=timezone.now() + REDACT_ONLY).failed


def _answers_kept_after_redaction() -> list:
    from intakes.models import CallbackAttempt

    return list(CallbackAttempt.objects.filter(
        delivery__work_item__redacted_at__isnull=False).exclude(response_body="")
        .values_list("number", "response_body"))


def test_an_attempt_made_after_redaction_keeps_no_answer(cast, cb_intake, receiver):
    """"Redeliver now" on a redacted item: the attempt is sent (as the item now is) and
    recorded, but what the receiver answered is not kept, as redaction removed the rest."""
    delivery = _delivered(cb_intake, receiver)
    _redaction_pass()
    assert WorkItem.objects.get().redacted_at is not None
    assert callback_delivery_redeliver(delivery=delivery, actor=cast.admin_a)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    assert delivery.attempt_rows.count() == 2
    assert _answers_kept_after_redaction() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_redaction_during_an_attempt_in_flight_keeps_no_answer(cast, cb_intake, receiver):
    """The receiver is still answering when retention redacts the item: the item waits for
    the next pass (its attempt in flight), which then removes the answer with the rest."""
    posted, answer = threading.Event(), threading.Event()

    def slow(request):
        from werkzeug import Response

        posted.set()
        assert answer.wait(30)
        return Response("the receiver says: order 42 for alice@example.com")

    receiver.expect_request("/hook").respond_with_handler(slow)
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    result: dict = {}

    def send():
        try:
            result["state"] = callback_delivery_process(delivery_id=delivery.pk)
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    assert posted.wait(30)
    _redaction_pass()  # while the POST waits for its answer
    answer.set()
    sender.join(30)
    assert result["state"] == "delivered"
    _redaction_pass()  # the next scheduled pass
    assert WorkItem.objects.get().redacted_at is not None
    assert _answers_kept_after_redaction() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_an_attempt_claimed_while_redaction_commits_keeps_no_answer(
        cast, cb_intake, receiver, monkeypatch):
    """The dispatcher claims the delivery while retention's redaction of its item is not yet
    committed: the claim waits for it, then sends the item as redacted and keeps no
    answer."""
    receiver.expect_request("/hook").respond_with_data("order 42 for alice@example.com")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    holding, release = threading.Event(), threading.Event()
    real_audit = retention_module._audit

    def audit_then_hold(event, *args, **kwargs):
        real_audit(event, *args, **kwargs)
        if event == "work_items.redacted":
            holding.set()
            assert release.wait(30)

    monkeypatch.setattr(retention_module, "_audit", audit_then_hold)
    result: dict = {}

    def run(name, call):
        try:
            result[name] = call()
        finally:
            connection.close()

    sweeper = threading.Thread(target=run, args=("retention", _redaction_pass))
    sweeper.start()
    assert holding.wait(30)
    sender = threading.Thread(target=run, args=(
        "state", lambda: callback_delivery_process(delivery_id=delivery.pk)))
    sender.start()
    for _ in range(3000):  # until the claim waits on retention's lock, or is done
        if _waiting_on_a_lock() or not sender.is_alive():
            break
        time.sleep(0.01)
    release.set()
    sweeper.join(30)
    sender.join(30)
    assert result["state"] == "delivered"
    assert WorkItem.objects.get().redacted_at is not None
    assert _answers_kept_after_redaction() == []


# --- Redaction against a replay: a replay never carries what redaction removed ------------
def _rejected_after_a_step(cast):
    from intakes.services import intake_create
    from tests.conftest import make_workflow
    from workflows.batch import work_item_process
    from workflows.services import work_item_create

    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{seen: input.card}"}),
                                          ("approval", {"instructions": "Check"})], name="Pay")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="pay")
    item = work_item_create(workflow=workflow, intake=intake, input={"card": "4242"})
    work_item_process(work_id=item.pk, drain_seconds=0)
    work_item_decide(item=item, decision="reject", user=cast.member_a)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.error["code"]) == ("failed", "rejected")
    return item


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("holder", ["replay", "redaction"])
def test_a_replay_and_the_redaction_of_its_item_at_once_carry_nothing_redacted(
        cast, monkeypatch, holder):
    """Whichever takes the failed item's row first, the other waits: a replay that commits
    first carried the real input and outputs (redaction then removes the original's); a
    redaction that commits first makes the replay a 409 `not_replayable`."""
    import workflows.replay as replay_module
    from workflows.models import StepRun
    from workflows.replay import work_item_replay

    item = _rejected_after_a_step(cast)
    holding, release = threading.Event(), threading.Event()
    seam = (replay_module, "_replay_audit") if holder == "replay" else (
        retention_module, "_audit")
    real = getattr(*seam)

    def then_hold(*args, **kwargs):
        real(*args, **kwargs)
        holding.set()
        assert release.wait(30)

    monkeypatch.setattr(*seam, then_hold)
    result: dict = {}

    def run(name, call):
        try:
            result[name] = call()
        except Exception as exc:
            result[name] = exc
        finally:
            connection.close()

    calls = {"replay": lambda: work_item_replay(item=WorkItem.objects.get(pk=item.pk),
                                                user=cast.member_a),
             "redaction": _redaction_pass}
    first = threading.Thread(target=run, args=(holder, calls[holder]))
    first.start()
    assert holding.wait(30)
    monkeypatch.setattr(*seam, real)
    other = "redaction" if holder == "replay" else "replay"
    second = threading.Thread(target=run, args=(other, calls[other]))
    second.start()
    for _ in range(3000):  # until the second waits on the first's lock, or is done
        if _waiting_on_a_lock() or not second.is_alive():
            break
        time.sleep(0.01)
    release.set()
    first.join(30)
    second.join(30)
    assert WorkItem.objects.get(pk=item.pk).redacted_at is not None
    if holder == "replay":
        new = result["replay"]
        assert isinstance(new, WorkItem), new
        new.refresh_from_db()
        assert new.input == {"card": "4242"}
        assert list(StepRun.objects.filter(work_item=new, status="carried")
                    .values_list("output", flat=True)) == [{"seen": "4242"}]
    else:
        refused = result["replay"]
        assert isinstance(refused, ApplicationError) and refused.code == "not_replayable"
        assert "retention policy" in refused.detail
        assert not WorkItem.objects.filter(replay_of_id=item.pk).exists()
