"""Signing secrets: format, encrypted at rest, rotation window, audit; the trigger header."""

import base64
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from auxot.models import AuditEvent
from intakes.callbacks import (
    callback_delivery_create,
    callback_delivery_process,
    intake_signing_secret_rotate,
)
from intakes.models import Intake
from intakes.secrets import secret_decrypt
from tests.callback_helpers import finished_item
from tests.conftest import bearer, trigger
from workflows.models import WorkItem

pytestmark = pytest.mark.django_db


def test_secret_is_standard_webhooks_format_and_encrypted_at_rest(cb_intake):
    secret = cb_intake.signing_secret
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    stored = Intake.objects.get(pk=cb_intake.pk).signing_secret_encrypted
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert secret_decrypt(stored) == secret


def test_secret_survives_secret_key_rotation_via_fallbacks(cb_intake, settings):
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key"
    assert secret_decrypt(cb_intake.signing_secret_encrypted) == cb_intake.signing_secret


def _deliver_and_capture(intake, receiver):
    delivery = callback_delivery_create(work_item=finished_item(intake))
    callback_delivery_process(delivery_id=delivery.pk)
    request = receiver.log[-1][0]
    return request.get_data(), dict(request.headers)


def test_rotation_signs_with_both_secrets_during_the_window_then_only_the_new(
        cb_intake, receiver, cast, settings):
    settings.AUXOT_CALLBACK_SECRET_ROTATION_HOURS = 24
    receiver.expect_request("/hook").respond_with_data("ok")
    old = cb_intake.signing_secret
    start = timezone.now()
    with time_machine.travel(start, tick=True):
        new = intake_signing_secret_rotate(intake=cb_intake, actor=cast.admin_a)
        assert new != old and new.startswith("whsec_")
        data, headers = _deliver_and_capture(cb_intake, receiver)
        assert len(headers["Webhook-Signature"].split(" ")) == 2
        Webhook(old).verify(data, headers)
        Webhook(new).verify(data, headers)
    with time_machine.travel(start + timedelta(hours=24, minutes=1), tick=True):
        data, headers = _deliver_and_capture(cb_intake, receiver)
        assert len(headers["Webhook-Signature"].split(" ")) == 1
        Webhook(new).verify(data, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(data, headers)


def test_a_second_rotation_inside_the_window_keeps_the_first_old_secret(
        cb_intake, receiver, cast, settings):
    """Rotate, then rotate again (a lost copy, two admins): the original secret, which every
    receiver still holds and was promised 24 h, stopped signing at once."""
    from intakes.callbacks import PREVIOUS_SECRETS_KEPT

    settings.AUXOT_CALLBACK_SECRET_ROTATION_HOURS = 24
    receiver.expect_request("/hook").respond_with_data("ok")
    original = cb_intake.signing_secret
    start = timezone.now()
    with time_machine.travel(start, tick=True):
        first = intake_signing_secret_rotate(intake=cb_intake, actor=cast.admin_a)
    with time_machine.travel(start + timedelta(hours=20), tick=True):
        second = intake_signing_secret_rotate(intake=cb_intake, actor=cast.admin_a)
    with time_machine.travel(start + timedelta(hours=30), tick=True):  # the second's window
        data, headers = _deliver_and_capture(cb_intake, receiver)
        assert len(headers["Webhook-Signature"].split(" ")) == 3
        for secret in (original, first, second):
            Webhook(secret).verify(data, headers)
    with time_machine.travel(start + timedelta(hours=44, minutes=1), tick=True):
        data, headers = _deliver_and_capture(cb_intake, receiver)
        Webhook(second).verify(data, headers)
        for secret in (original, first):
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(data, headers)
        third = intake_signing_secret_rotate(intake=cb_intake, actor=cast.admin_a)
        data, headers = _deliver_and_capture(cb_intake, receiver)  # the window had closed:
        assert len(headers["Webhook-Signature"].split(" ")) == 2  # only `second` is old now
        Webhook(third).verify(data, headers)
        Webhook(second).verify(data, headers)
        for _ in range(5):  # many rotations in a row: a bounded header
            intake_signing_secret_rotate(intake=cb_intake, actor=cast.admin_a)
        data, headers = _deliver_and_capture(cb_intake, receiver)
        assert len(headers["Webhook-Signature"].split(" ")) == 1 + PREVIOUS_SECRETS_KEPT


def test_rotation_is_audited_without_the_secret(cb_intake, cast):
    new = intake_signing_secret_rotate(intake=cb_intake, actor=cast.admin_a)
    event = AuditEvent.objects.get(event="intake.signing_secret_rotated")
    assert event.actor_user == cast.admin_a and event.object_id == str(cb_intake.pk)
    assert "previous_valid_until" in event.extra
    for row in AuditEvent.objects.all():
        assert new not in str(row.extra) and cb_intake.signing_secret not in str(row.extra)


def test_trigger_header_overrides_the_callback_url(api, intake_a, member_token, receiver):
    url = receiver.url_for("/mine?sig=x")
    response = trigger(api, intake_a.pk, member_token, HTTP_AUXOT_CALLBACK_URL=url)
    assert response.status_code == 202
    item = WorkItem.objects.get(pk=response.json()["work_id"])
    assert item.callback_url == url
    polled = api.get(f"/v1/intake/{intake_a.pk}/work/{item.pk}", **bearer(member_token)).json()
    assert polled["callback"] == {"url": receiver.url_for("/mine?sig=REDACTED"),
                                  "state": "pending", "attempts": 0, "next_attempt_at": None,
                                  "last_status": None}


@pytest.mark.parametrize("url", ["http://169.254.169.254/", "http://0x7f000001/",
                                 "ftp://example.com/", "not a url", "https://fK~[sz",
                                 "http://:j`R6sw(m0hU_Es^"])
def test_bad_callback_header_is_a_422_and_creates_nothing(api, intake_a, member_token, url):
    response = trigger(api, intake_a.pk, member_token, HTTP_AUXOT_CALLBACK_URL=url)
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "validation_failed"
    assert WorkItem.objects.count() == 0


def test_poll_without_callback_url_has_a_null_callback_block(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    body = api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}", **bearer(member_token)).json()
    assert body["callback"] is None
