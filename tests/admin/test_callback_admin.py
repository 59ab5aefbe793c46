"""Callback admin: rotate (shown once), test callback, redeliver, re-enable, delivery logs."""

import json
import re
import socket

import pytest
from standardwebhooks.webhooks import Webhook

from auxot.models import AuditEvent
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from intakes.models import CallbackAttempt, Intake
from intakes.secrets import secret_decrypt
from intakes.services import intake_create
from tests.callback_helpers import finished_item
from workflows.models import WorkItem

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/intakes/intake/"


def _action(client, action: str, intake, url=CHANGELIST):
    return client.post(url, {"action": action, "_selected_action": [str(intake.pk)]})


def test_rotate_action_shows_the_new_secret_once(admin_client, cb_intake):
    """The new secret was the answer to the action's POST: a reload rotated again. It is
    shown after a redirect, once."""
    posted = _action(admin_client, "rotate_signing_secret", cb_intake)
    assert posted.status_code == 302 and "whsec_" not in posted.content.decode()
    response = admin_client.get(posted["Location"])
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    [shown] = re.findall(r'<code class="signing-secret">(whsec_[^<]+)</code>',
                         response.content.decode())
    again = admin_client.get(posted["Location"]).content.decode()
    assert "whsec_" not in again and "are not shown again" in again
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


def test_send_test_callback_to_an_intake_without_a_url_does_not_say_it_sent(
        admin_client, cb_intake, receiver):
    """The page opened with "a signed sample body was sent to each intake's callback URL"
    when the intake had none and nothing was sent."""
    Intake.objects.filter(pk=cb_intake.pk).update(callback_url="")
    page = _action(admin_client, "send_test_callback", cb_intake).content.decode()
    assert "The intake has no callback URL." in page
    assert "sent to each intake's callback URL" not in page
    assert "sent to the callback URL of each intake that has one" in page
    assert receiver.log == []


def _test_sent_rows(intake) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event="callback.test_sent", object_id=str(intake.pk)))


def test_send_test_callback_is_audited_with_actor_destination_and_outcome(
        admin_client, admin_user, cb_intake, receiver):
    """One `callback.test_sent` row per send, in the intake's organization: who, from where,
    the URL redacted as the rest of the trail shows it, the status. Never the receiver's
    answer, the URL's token or the signing secret."""
    receiver.expect_request("/hook").respond_with_data("receiver says hi", status=202)
    _action(admin_client, "send_test_callback", cb_intake)
    [row] = _test_sent_rows(cb_intake)
    assert (row.org_id, row.actor_user_id, row.ip) == (cb_intake.org_id, admin_user.pk,
                                                       "127.0.0.1")
    assert row.object_type == "intakes.intake" and row.extra["name"] == cb_intake.name
    assert row.extra["url"] == receiver.url_for("/hook?token=REDACTED")
    assert (row.extra["status"], row.extra["error"]) == (202, None)
    stored = json.dumps(row.extra)
    assert "receiver says hi" not in stored and "s3" not in stored
    assert cb_intake.signing_secret not in stored


def test_send_test_callback_audits_each_send_and_what_kind_of_error(
        admin_client, cast, cb_intake, receiver):
    """A refused URL, a receiver that is not there, an intake with no URL: each send is a
    row with the kind of error (the error's text may quote the receiver: not kept)."""
    Intake.objects.filter(pk=cb_intake.pk).update(callback_url="http://169.254.169.254/x?k=v1")
    _action(admin_client, "send_test_callback", cb_intake)
    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    Intake.objects.filter(pk=cb_intake.pk).update(callback_url=f"http://127.0.0.1:{port}/h")
    _action(admin_client, "send_test_callback", cb_intake)
    bare = intake_create(org=cast.org_a, workflow=cb_intake.workflow, name="No URL")
    admin_client.post(CHANGELIST, {"action": "send_test_callback",
                                   "_selected_action": [str(bare.pk), str(cb_intake.pk)]})
    outcomes = [(row.extra["url"], row.extra["status"], row.extra["error"])
                for row in sorted(_test_sent_rows(cb_intake), key=lambda r: r.created_at)]
    assert outcomes == [("http://169.254.169.254/x?k=REDACTED", None, "refused"),
                        (f"http://127.0.0.1:{port}/h", None, "connection_failed"),
                        (f"http://127.0.0.1:{port}/h", None, "connection_failed")]
    [none] = _test_sent_rows(bare)
    assert (none.org_id, none.extra["url"], none.extra["error"]) == (
        cast.org_a.pk, None, "no_callback_url")
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


SHOWN = re.compile(r'<code class="signing-secret">(whsec_[^<]+)</code>')


def _add_intake(client, workflow, name="From admin"):
    return client.post(f"{CHANGELIST}add/", {"workflow": workflow.pk, "name": name,
                                             "callback_url": ""})


def test_adding_an_intake_in_the_admin_shows_its_secret_once(admin_client, cast, workflow_a):
    """The add POST answers a redirect (a reload of the page that shows the secret must not
    post again: it added a second intake with a secret of its own); the next GET shows the
    secret, once; a second GET (a reload) says it is not shown again."""
    response = _add_intake(admin_client, workflow_a)
    assert response.status_code == 302, response.content[:2000]
    intake = Intake.objects.get(name="From admin")
    secret = secret_decrypt(intake.signing_secret_encrypted)
    assert response["Location"] == f"{CHANGELIST}{intake.pk}/signing-secret/"
    assert secret not in response["Location"] and secret.removeprefix("whsec_") not in (
        response["Location"])
    page = admin_client.get(response["Location"])
    html = page.content.decode()
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    assert SHOWN.findall(html) == [secret] and html.count(secret) == 1
    assert f'href="{CHANGELIST}{intake.pk}/change/" id="open-intake"' in html
    again = admin_client.get(response["Location"])
    html = again.content.decode()
    assert again.status_code == 200 and "no-store" in again["Cache-Control"]
    assert "whsec_" not in html and 'id="secret-gone"' in html
    assert "is not shown again" in html and "Rotate signing secret" in html
    assert Intake.objects.filter(name="From admin").count() == 1
    assert WorkItem.objects.count() == 0


def test_a_new_intakes_secret_is_shown_to_no_other_session(admin_client, client, cast,
                                                           workflow_a):
    """The stash lives in the session that added the intake: another user (here an admin of
    the same organization) opening the same URL first sees no secret, and the adder still
    sees it after that, without posting again."""
    response = _add_intake(admin_client, workflow_a)
    url = response["Location"]
    client.force_login(cast.admin_a)
    html = client.get(url).content.decode()
    assert "whsec_" not in html and 'id="secret-gone"' in html
    intake = Intake.objects.get(name="From admin")
    assert SHOWN.findall(admin_client.get(url).content.decode()) == [
        secret_decrypt(intake.signing_secret_encrypted)]
    assert Intake.objects.count() == 1


def test_a_new_intakes_secret_crosses_the_redirect_encrypted_and_short_lived(
        admin_client, cast, workflow_a, time_machine):
    from datetime import timedelta

    from django.contrib.sessions.models import Session
    from django.utils import timezone

    response = _add_intake(admin_client, workflow_a)
    intake = Intake.objects.get(name="From admin")
    secret = secret_decrypt(intake.signing_secret_encrypted)
    [row] = Session.objects.all()
    stash = row.get_decoded()["auxot_new_signing_secret"]
    assert list(stash["secrets"]) == [str(intake.pk)]
    assert secret.removeprefix("whsec_") not in str(stash)
    # A redirect followed too late shows no secret, and says what to do.
    time_machine.move_to(timezone.now() + timedelta(seconds=301))
    html = admin_client.get(response["Location"]).content.decode()
    assert "whsec_" not in html and "gone for good" in html and "Rotate signing secret" in html
    assert "auxot_new_signing_secret" not in Session.objects.get().get_decoded()


def test_the_secret_page_is_refused_to_members_and_auditors_and_takes_no_post(
        admin_client, client, cast, workflow_a):
    url = _add_intake(admin_client, workflow_a)["Location"]
    for who in (cast.member_a, cast.auditor_a):
        client.force_login(who)
        assert client.get(url).status_code == 403
    assert admin_client.post(url).status_code == 405
    assert SHOWN.findall(admin_client.get(url).content.decode())  # the POST popped nothing


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



def test_an_intake_saved_without_a_secret_shows_the_one_it_gets_once(admin_client, cb_intake):
    """An intake made before signing secrets got one when saved, and it was never shown."""
    Intake.objects.filter(pk=cb_intake.pk).update(signing_secret_encrypted="")
    page = admin_client.get(f"{CHANGELIST}{cb_intake.pk}/change/")
    form = {name: value for name, value in (
        ("workflow", str(cb_intake.workflow_id)), ("name", "renamed"),
        ("callback_url", cb_intake.callback_url), ("rate_limit_per_window", ""),
        ("payload_retention_days", ""), ("item_retention_days", ""), ("redact_paths", "[]"))}
    assert page.status_code == 200
    saved = admin_client.post(f"{CHANGELIST}{cb_intake.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert saved["Location"].endswith(f"/{cb_intake.pk}/signing-secret/")
    [shown] = re.findall(r'<code class="signing-secret">(whsec_[^<]+)</code>',
                         admin_client.get(saved["Location"]).content.decode())
    cb_intake.refresh_from_db()
    assert secret_decrypt(cb_intake.signing_secret_encrypted) == shown


def test_send_test_callback_refuses_more_intakes_than_it_tests_at_once(
        admin_client, cb_intake, receiver, monkeypatch):
    """Each test waits for its receiver inside the request (up to the callback timeout):
    "Select all" over many intakes with slow receivers outlasted gunicorn's timeout. Over
    the cap nothing is sent and nothing audited; the page says to select fewer."""
    from intakes.admin_callbacks import IntakeCallbacksAdminMixin

    assert IntakeCallbacksAdminMixin.send_test_callback.at_once == 5
    monkeypatch.setattr(IntakeCallbacksAdminMixin.send_test_callback, "at_once", 1)
    other = intake_create(org=cb_intake.org, workflow=cb_intake.workflow, name="second",
                          callback_url=cb_intake.callback_url)
    response = admin_client.post(CHANGELIST, {
        "action": "send_test_callback",
        "_selected_action": [str(cb_intake.pk), str(other.pk)]}, follow=True)
    page = response.content.decode()
    assert "Nothing was done: 2 intakes are selected" in page
    assert receiver.log == []
    assert not AuditEvent.objects.filter(event="callback.test_sent").exists()
