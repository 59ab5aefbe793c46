"""Callback admin: rotate (shown once), test callback, redeliver, re-enable, delivery logs."""

import re

import pytest
from standardwebhooks.webhooks import Webhook

from auxot.models import AuditEvent
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from intakes.models import CallbackAttempt, Intake
from intakes.secrets import secret_decrypt
from tests.callback_helpers import finished_item
from workflows.models import WorkItem

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/intakes/intake/"


def _action(client, action: str, intake, url=CHANGELIST):
    return client.post(url, {"action": action, "_selected_action": [str(intake.pk)]})


def test_rotate_action_shows_the_new_secret_once(admin_client, cb_intake):
    response = _action(admin_client, "rotate_signing_secret", cb_intake)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    [shown] = re.findall(r'<code class="signing-secret">(whsec_[^<]+)</code>',
                         response.content.decode())
    cb_intake.refresh_from_db()
    assert secret_decrypt(cb_intake.signing_secret_encrypted) == shown != cb_intake.signing_secret
    assert AuditEvent.objects.filter(event="intake.signing_secret_rotated").count() == 1
    page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/").content.decode()
    assert shown not in page and "the previous one(s) sign too until" in page


def test_send_test_callback_posts_a_signed_sample_and_shows_the_answer(
        admin_client, cb_intake, receiver):
    receiver.expect_request("/hook").respond_with_data("receiver says hi", status=202)
    response = _action(admin_client, "send_test_callback", cb_intake)
    page = response.content.decode()
    assert "HTTP 202 (success)" in page and "receiver says hi" in page
    [(request, _)] = receiver.log
    body = Webhook(cb_intake.signing_secret).verify(request.get_data(), dict(request.headers))
    assert body["test"] is True and body["intake_id"] == str(cb_intake.pk)


def test_send_test_callback_obeys_the_url_policy(admin_client, cb_intake, receiver):
    Intake.objects.filter(pk=cb_intake.pk).update(callback_url="http://169.254.169.254/x")
    page = _action(admin_client, "send_test_callback", cb_intake).content.decode()
    assert "refused: 169.254.169.254 is a link-local address" in page
    assert receiver.log == []


def test_admin_refuses_a_forbidden_callback_url(admin_client, cb_intake):
    page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() or "" for name in form.fields}
    data["callback_url"] = "http://10.0.0.1/hook"
    response = admin_client.post(f"{CHANGELIST}{cb_intake.pk}/change/", data)
    assert response.status_code == 200
    assert "private address" in response.content.decode()


def test_redeliver_action_and_delivery_logs(admin_client, cb_intake, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    item = finished_item(cb_intake)
    delivery = callback_delivery_create(work_item=item)
    callback_delivery_process(delivery_id=delivery.pk)
    response = admin_client.post("/admin/intakes/callbackdelivery/", {
        "action": "redeliver_now", "_selected_action": [str(delivery.pk)]}, follow=True)
    assert "1 delivery(ies) queued" in response.content.decode()
    callback_delivery_process(delivery_id=delivery.pk)
    assert CallbackAttempt.objects.filter(delivery=delivery).count() == 2
    assert {r.headers["webhook-id"] for r, _ in receiver.log} == {delivery.webhook_id}
    detail = admin_client.get(f"/admin/intakes/callbackdelivery/{delivery.pk}/change/")
    assert "token=REDACTED" in detail.content.decode()
    work_page = admin_client.get(f"/admin/workflows/workitem/{item.pk}/change/").content.decode()
    assert delivery.webhook_id in work_page and "#2" in work_page
    intake_page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/").content.decode()
    assert delivery.webhook_id in intake_page


def test_disabled_callback_is_visible_and_can_be_re_enabled(admin_client, cb_intake, receiver):
    receiver.expect_request("/hook").respond_with_data("gone", status=410)
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    callback_delivery_process(delivery_id=delivery.pk)
    page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/").content.decode()
    assert "Disabled" in page and "410 Gone" in page
    _action(admin_client, "enable_callbacks", cb_intake)
    cb_intake.refresh_from_db()
    assert cb_intake.callback_disabled_at is None
    assert AuditEvent.objects.filter(event="intake.callback_enabled").count() == 1


def test_adding_an_intake_in_the_admin_shows_its_secret_once(admin_client, cast, workflow_a):
    response = admin_client.post(f"{CHANGELIST}add/", {
        "org": cast.org_a.pk, "workflow": workflow_a.pk, "name": "From admin", "active": "on",
        "callback_url": "", "created_at_0": "2026-11-29", "created_at_1": "07:00:00"})
    assert response.status_code == 200, response.content[:2000]
    [shown] = re.findall(r'<code class="signing-secret">(whsec_[^<]+)</code>',
                         response.content.decode())
    intake = Intake.objects.get(name="From admin")
    assert secret_decrypt(intake.signing_secret_encrypted) == shown
    assert WorkItem.objects.count() == 0


def test_delivery_log_is_scoped_to_the_viewers_organization(client, cast, cb_intake, receiver):
    from django.contrib.auth.models import Permission

    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    for user in (cast.outsider_b, cast.admin_a):
        user.user_permissions.add(Permission.objects.get(codename="view_callbackdelivery"))
    client.force_login(cast.outsider_b)
    page = client.get("/admin/intakes/callbackdelivery/")
    assert page.status_code == 200 and delivery.webhook_id not in page.content.decode()
    assert client.get(f"/admin/intakes/callbackdelivery/{delivery.pk}/change/").status_code in (
        302, 404)
    client.force_login(cast.admin_a)
    assert delivery.webhook_id in client.get("/admin/intakes/callbackdelivery/").content.decode()


def test_an_open_breaker_shows_endpoint_failing_since_on_the_intake_and_delivery(
        admin_client, client, cast, cb_intake, receiver, settings):
    from intakes.models import CallbackEndpoint

    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 2
    receiver.expect_request("/hook").respond_with_data("down", status=503)
    deliveries = [callback_delivery_create(work_item=finished_item(cb_intake)) for _ in range(2)]
    for delivery in deliveries:
        callback_delivery_process(delivery_id=delivery.pk)
    endpoint = CallbackEndpoint.objects.get()
    since = f"{endpoint.failing_since:%Y-%m-%d %H:%M:%S UTC}"
    intake_page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/").content.decode()
    assert f"Endpoint failing since {since}" in intake_page
    page = admin_client.get(f"/admin/intakes/callbackdelivery/{deliveries[0].pk}/change/")
    assert f"Endpoint failing since {since}" in page.content.decode()
    listing = admin_client.get("/admin/intakes/callbackendpoint/").content.decode()
    assert endpoint.key in listing and "HTTP 503" in listing
    # The endpoint list spans organizations: an org admin does not get it.
    client.force_login(cast.admin_a)
    assert client.get("/admin/intakes/callbackendpoint/").status_code in (302, 403)
    # A success closes the breaker and the text goes away.
    receiver.clear()
    receiver.expect_request("/hook").respond_with_data("ok")
    from intakes.callbacks import endpoint_outcome

    endpoint_outcome(key=endpoint.key, ok=True)
    intake_page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/").content.decode()
    assert "Endpoint failing since" not in intake_page


def test_the_intake_form_labels_the_url_as_the_tutorial_does(admin_client, cb_intake):
    """The tutorial and the README say "Callback URL"; the form said "Callback url"."""
    page = admin_client.get(f"/admin/intakes/intake/{cb_intake.pk}/change/").content.decode()
    assert ">Callback URL:</label>" in page and "Callback url" not in page
    assert "moves the retries still waiting for the old one" in page
