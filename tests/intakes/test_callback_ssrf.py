"""The outbound policy as callbacks see it: refused destinations are failed attempts and no
packet leaves (the full class of address forms for every caller is in test_outbound.py)."""

import importlib
import socket

import pytest
from werkzeug import Response

from auxot.outbound import RefusedDestination, url_check, url_hidden_parts, url_redact
from intakes.callbacks import (
    _scrub,
    callback_delivery_create,
    callback_delivery_process,
    callback_post,
)
from intakes.models import CallbackAttempt, CallbackDelivery, Intake
from tests.callback_helpers import finished_item

pytestmark = pytest.mark.django_db

REFUSED = [
    "http://127.0.0.2/hook",  # loopback outside the allowed 127.0.0.1/32
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://100.64.0.1/hook",  # CGNAT
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://0.0.0.0/hook",  # unspecified
    "http://[::]/hook",
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[ff02::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
    "http://[::ffff:8.8.8.8]/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one number
    "http://0x7f000001/hook",  # ... in hex
    "http://0177.0.0.1/hook",  # ... in octal
    "http://127.1/hook",  # ... shortened
    "http://0x7f.1/hook",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_destination_sends_nothing(url, connections):
    result = callback_post(url=url, body=b"{}", headers={})
    assert result.refused and result.status is None
    assert result.error.startswith("refused: ")
    assert connections == []


@pytest.mark.parametrize("url", REFUSED)
def test_refused_destination_is_rejected_when_saved(url):
    with pytest.raises(RefusedDestination):
        url_check(url, purpose="callback")


def test_hostname_resolving_to_a_private_address_is_refused_at_connect(monkeypatch,
                                                                      connections):
    # Passes the save-time check (a name), then resolves to an internal address.
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))])
    url_check("http://internal.example/hook", purpose="callback")
    result = callback_post(url="http://internal.example/hook", body=b"{}", headers={})
    assert result.refused
    assert "internal.example does not resolve to a public address" in result.error
    assert "10.1.2.3" not in result.error  # the server's internal DNS is not shown
    assert connections == []


def test_any_bad_address_among_several_answers_is_refused(monkeypatch, connections):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))])
    result = callback_post(url="http://round-robin.example/hook", body=b"{}", headers={})
    assert result.refused and "does not resolve to a public address" in result.error
    assert "169.254" not in result.error
    assert connections == []


def test_connection_goes_to_the_checked_address_with_the_original_host(
        monkeypatch, receiver, connections):
    # The name resolves (once, checked) to the allowed receiver; Host keeps the name.
    real = socket.getaddrinfo
    calls = []

    def resolve(host, port, *args, **kwargs):
        calls.append(host)
        return real("127.0.0.1" if host == "receiver.example" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    receiver.expect_request("/hook").respond_with_data("ok")
    url = f"http://receiver.example:{receiver.port}/hook"
    result = callback_post(url=url, body=b"{}", headers={})
    assert result.status == 200
    [(request, _)] = receiver.log
    assert request.headers["Host"] == f"receiver.example:{receiver.port}"
    assert calls.count("receiver.example") == 1
    assert connections == [("127.0.0.1", receiver.port)]


def test_https_only_unless_http_is_allowed(settings, connections):
    settings.AUXOT_CALLBACK_ALLOW_HTTP = False
    with pytest.raises(RefusedDestination, match="must use https"):
        url_check("http://example.com/hook", purpose="callback")
    result = callback_post(url="http://example.com/hook", body=b"{}", headers={})
    assert result.refused and connections == []
    assert url_check("https://example.com/hook", purpose="callback")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "https://", "https://user:pw@x.com/",
                                 "https://example.com/#frag", "not a url", "https://exa mple.com/",
                                 "https://example.com:99999/", "https://x.com/" + "a" * 2000,
                                 # accepted once, then failed on every attempt of the schedule:
                                 "https://[v1.x]/hook", "https://[example.com]/hook",
                                 "https://example.com:0/hook"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(RefusedDestination):
        url_check(url, purpose="callback")


def test_allowed_networks_open_a_private_range(settings, connections):
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["10.9.0.0/16"]
    assert url_check("http://10.9.8.7/hook", purpose="callback")
    with pytest.raises(RefusedDestination):
        url_check("http://10.8.0.1/hook", purpose="callback")


def test_refused_delivery_is_a_failed_attempt_with_a_clear_error(cb_intake, receiver,
                                                                 connections):
    item = finished_item(cb_intake, callback_url="http://169.254.169.254/latest/meta-data/")
    delivery = callback_delivery_create(work_item=item)
    assert callback_delivery_process(delivery_id=delivery.pk) == "failed"
    attempt = CallbackAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None and "link-local" in attempt.error
    assert CallbackDelivery.objects.get(pk=delivery.pk).next_attempt_at is None
    assert connections == [] and receiver.log == []


# --- A caller's own URL (Auxot-Callback-Url) is not an admin's: the operator's list is not theirs

@pytest.fixture
def operator_opens_loopback_to_admins_only(settings):
    """The operator lets admins' steps, providers and intake callbacks reach 127.0.0.1 (its
    own model server, say); callers' URLs get no such list."""
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = ["localhost"]
    settings.AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = []


@pytest.mark.parametrize("path", ["/internal/admin", "/hook"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_caller_cannot_send_its_callback_into_the_operators_allowed_networks(
        operator_opens_loopback_to_admins_only, api, cb_intake, member_token, receiver, host,
        path):
    """Any key holder could point Auxot-Callback-Url at a service the operator opened for
    its organizations' admins, then read its status in the poll and its first 2 KiB in the
    stored attempt. The trigger is now a 422, and nothing is created."""
    from tests.conftest import trigger
    from workflows.models import WorkItem

    url = receiver.url_for(path).replace("localhost", host)
    url = url.replace("127.0.0.1", host)
    answer = trigger(api, cb_intake.pk, member_token, HTTP_AUXOT_CALLBACK_URL=url)
    assert answer.status_code == 422, answer.content
    assert "AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS" in answer.json()["detail"]
    assert not WorkItem.objects.exists() and receiver.log == []


def test_the_intakes_own_callback_url_keeps_the_operators_list(
        operator_opens_loopback_to_admins_only, cb_intake, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    assert cb_intake.callback_url.startswith("http://127.0.0.1:")  # set by its admin
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"


def test_a_callers_url_accepted_before_the_list_narrowed_is_refused_when_sent(
        cb_intake, receiver, settings, connections):
    item = finished_item(cb_intake, callback_url=receiver.url_for("/internal/admin"))
    delivery = callback_delivery_create(work_item=item)
    assert not delivery.uses_intake_default
    settings.AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = []  # the operator narrowed it since
    assert callback_delivery_process(delivery_id=delivery.pk) == "failed"
    attempt = CallbackAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None and attempt.response_body == ""
    assert "AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS" in attempt.error
    assert connections == [] and receiver.log == []


def test_the_callers_own_list_opens_only_its_networks(settings):
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = []
    settings.AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = ["10.9.0.0/16"]
    assert url_check("http://10.9.8.7/hook", purpose="caller_callback")
    for url, purpose in (("http://10.9.8.7/hook", "callback"),
                         ("http://10.9.8.7/hook", "http"),
                         ("http://10.8.0.1/hook", "caller_callback")):
        with pytest.raises(RefusedDestination):
            url_check(url, purpose=purpose)


def test_redaction_hides_query_values_and_credentials():
    assert url_redact("https://u:p@h.example:8443/p?token=abc&x=1") == (
        "https://h.example:8443/p?token=REDACTED&x=REDACTED")
    assert url_redact("https://h.example:99999/") == "(malformed URL)"


# Receivers that carry their credential in the path: (URL, the secret, what is shown).
PATH_TOKENS = [
    ("https://hooks.slack.com/services/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",
     "xoxWq8bJ2kLmN4pRsT6vYz1a", "https://hooks.slack.com/services/REDACTED/REDACTED/REDACTED"),
    ("https://discord.com/api/webhooks/112233445566778899/AbC-dEf_GhIjKlMnOpQrStUvWxYz0123",
     "AbC-dEf_GhIjKlMnOpQrStUvWxYz0123", "https://discord.com/api/REDACTED/REDACTED/REDACTED"),
    ("https://hooks.zapier.com/hooks/catch/123456/abcdefg/", "abcdefg",
     "https://hooks.zapier.com/hooks/REDACTED/REDACTED/REDACTED/"),
    ("https://webhook.site/4f1c2d3e-5a6b-7c8d-9e0f-a1b2c3d4e5f6", "4f1c2d3e-5a6b",
     "https://webhook.site/REDACTED"),
    ("https://maker.ifttt.com/trigger/done/with/key/dK3lq9ZxYwV", "dK3lq9ZxYwV",
     "https://maker.ifttt.com/trigger/REDACTED/REDACTED/REDACTED/REDACTED"),
    ("https://x.example/%73ecret/more", "%73ecret", "https://x.example/REDACTED/REDACTED"),
    ("https://x.example/abcdefghijklmnopqrstuvwxyzabcdefghij", "abcdefghijklmnopqrstuvwxyz",
     "https://x.example/REDACTED"),  # a first word longer than a route's name
    ("https://x.example/hooks/s3cret?sig=v4lue#frag", "s3cret",
     "https://x.example/hooks/REDACTED?sig=REDACTED"),
    ("https://x.example/qXwZrTyKpLmNbVcDfGhJsEcReTtok", "qXwZrTyKpLmNbVcDfGhJsEcReTtok",
     "https://x.example/REDACTED"),  # letters only, but cases mixed: generated
    ("https://hooks.example.com/hook?xoxSECRETa1", "xoxSECRETa1",
     "https://hooks.example.com/hook?REDACTED"),  # a query part with no name
    ("https://x.example/Webhooks/in", "", "https://x.example/REDACTED/REDACTED"),
    ("https://x.example/auxot", "", "https://x.example/auxot"),  # a route's name shows
    ("https://x.example/web_hooks-v.x", "", "https://x.example/web_hooks-v.x"),
    ("https://x.example/", "", "https://x.example/"),
]


@pytest.mark.parametrize(("url", "secret", "shown"), PATH_TOKENS)
def test_redaction_hides_every_path_segment_but_a_plain_first_word(url, secret, shown):
    assert url_redact(url) == shown
    assert url_redact(shown) == shown  # redacting twice changes nothing
    if secret:
        assert secret not in url_redact(url)
        assert any(secret in part for part in url_hidden_parts(url))


def test_hidden_parts_scrub_a_message_that_quotes_the_url():
    url = "https://u:pw123456@x.example/hooks/T0ken123/B45?token=s3cret&x=1"
    message = f"Max retries exceeded with url: /hooks/T0ken123/B45?token=s3cret&x=1 ({url})"
    scrubbed = _scrub(message, url)
    for secret in ("T0ken123", "s3cret", "pw123456"):
        assert secret not in scrubbed
    hidden = url_hidden_parts(url)
    assert {"token=s3cret&x=1", "token=s3cret", "s3cret", "u:pw123456", "T0ken123"} <= set(hidden)
    assert "B45" not in hidden and "x=1" not in hidden  # too short to hold a token
    assert list(hidden) == sorted(hidden, key=len, reverse=True)  # a longer part goes first
    words = url_hidden_parts("https://x.example/hook?format=json&debug=true&t=abcdefgh1")
    assert {"format=json", "debug=true", "abcdefgh1"} <= set(words)
    assert "json" not in words and "true" not in words  # alone, a word is no token
    decoded = url_hidden_parts("https://x.example/hook/Sec%20ret%2BT0ken?k=a%2Fb+c%26d")
    assert {"Sec ret+T0ken", "a/b c&d", "a/b+c&d"} <= set(decoded)  # as a page may quote it


# How a receiver's answer may quote the URL it was asked for (/hook/T0kenInPath77 with
# ?v=2&token=s3cretQQ): each way, neither token may be stored.
QUOTED = {
    "whole": "no route for {url}",
    "the value alone": "bad token s3cretQQ",
    "JSON-escaped &": '{{"url": "/hook/T0kenInPath77?v=2\\u0026token=s3cretQQ"}}',
    "HTML-escaped &": "<a href='/hook/T0kenInPath77?v=2&amp;token=s3cretQQ'>",
    "across the 2 KiB cut": "x" * 2036 + "/hook/T0kenInPath77?v=2&token=s3cretQQ",
}


@pytest.mark.parametrize("how", list(QUOTED))
def test_no_quoting_of_the_url_in_an_answer_stores_its_tokens(receiver, how):
    url = receiver.url_for("/hook/T0kenInPath77?v=2&token=s3cretQQ")
    receiver.expect_request("/hook/T0kenInPath77").respond_with_handler(
        lambda request: Response(QUOTED[how].format(url=request.url), status=404))
    result = callback_post(url=url, body=b"{}", headers={})
    assert result.status == 404 and len(result.body.encode()) <= 2048
    for token in ("T0kenInPath77", "s3cretQQ", "T0ken", "s3cr"):
        assert token not in result.body, result.body[-80:]


def test_a_non_ascii_path_token_is_cut_as_it_was_sent(receiver):
    url = receiver.url_for("/hook/T\u00f6k3nSecret")  # sent as /hook/T%C3%B6k3nSecret
    receiver.expect_request("/hook/T\u00f6k3nSecret").respond_with_handler(
        lambda request: Response(f"no route {request.environ['REQUEST_URI']}", status=404))
    result = callback_post(url=url, body=b"{}", headers={})
    assert result.status == 404 and result.body == "no route /hook/REDACTED", result.body


def test_an_answer_that_quotes_the_url_is_stored_without_its_tokens(receiver):
    receiver.expect_request("/hook/T0kenInPath77").respond_with_handler(
        lambda request: Response(f"no route for {request.url}", status=404))
    url = receiver.url_for("/hook/T0kenInPath77?token=s3cretQ")
    result = callback_post(url=url, body=b"{}", headers={})
    assert result.status == 404 and result.body.startswith("no route for ")
    assert "T0kenInPath77" not in result.body and "s3cretQ" not in result.body
    assert "/hook/REDACTED?REDACTED" in result.body


def test_the_migration_redacts_path_tokens_in_rows_written_before(cb_intake, receiver):
    from django.apps import apps
    from django.utils import timezone

    migration = importlib.import_module("intakes.migrations.0008_redact_callback_url_paths")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    url = receiver.url_for("/hook/T0kenOld55?token=s3")
    CallbackDelivery.objects.filter(pk=delivery.pk).update(
        url=url, last_error="connection failed: /hook/T0kenOld55?token=s3")
    CallbackAttempt.objects.create(  # as attempts were stored: the query's values redacted
        delivery=delivery, number=1, started_at=timezone.now(),
        url=receiver.url_for("/hook/T0kenOld55?token=REDACTED"), status_code=404,
        response_body="no route for /hook/T0kenOld55", error="")
    Intake.objects.filter(pk=cb_intake.pk).update(
        callback_disabled_at=timezone.now(),
        callback_disabled_reason=f"410 Gone from {url.replace('token=s3', 'token=REDACTED')}")
    migration.redact_paths(apps, None)
    attempt = CallbackAttempt.objects.get(delivery=delivery)
    assert attempt.url == receiver.url_for("/hook/REDACTED?token=REDACTED")
    assert attempt.response_body == "no route for /hook/REDACTED"
    assert CallbackDelivery.objects.get(pk=delivery.pk).last_error == (
        "connection failed: /hook/REDACTED?REDACTED")
    assert Intake.objects.get(pk=cb_intake.pk).callback_disabled_reason == (
        "410 Gone from " + receiver.url_for("/hook/REDACTED?token=REDACTED"))


def test_a_name_that_does_not_resolve_reads_like_one_that_resolves_inside(monkeypatch, caplog,
                                                                          connections):
    """A caller's Auxot-Callback-Url must not map the server's internal DNS: "cannot resolve"
    against "resolves to a private address" told which internal names exist. Both read the
    same to tenants; the operators' log says which."""
    import logging

    def getaddrinfo(host, port, *a, **k):
        if host == "db.internal":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    caplog.set_level(logging.INFO, logger="auxot.outbound")
    errors = {}
    for host in ("db.internal", "nothing.internal"):
        result = callback_post(url=f"http://{host}/hook", body=b"{}", headers={})
        assert result.refused
        errors[host] = result.error.replace(host, "HOST")
    assert errors["db.internal"] == errors["nothing.internal"]
    assert "does not resolve to a public address" in errors["db.internal"]
    assert "db.internal resolves to a private address" in caplog.text
    assert "cannot resolve nothing.internal" in caplog.text
    assert connections == []
