"""The outbound policy as callbacks see it: refused destinations are failed attempts and no
packet leaves (the full class of address forms for every caller is in test_outbound.py)."""

import socket

import pytest

from auxot.outbound import RefusedDestination, url_check, url_redact
from intakes.callbacks import callback_delivery_create, callback_delivery_process, callback_post
from intakes.models import CallbackAttempt, CallbackDelivery
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
    assert "internal.example resolves to a private address" in result.error
    assert "10.1.2.3" not in result.error  # the server's internal DNS is not shown
    assert connections == []


def test_any_bad_address_among_several_answers_is_refused(monkeypatch, connections):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))])
    result = callback_post(url="http://round-robin.example/hook", body=b"{}", headers={})
    assert result.refused and "resolves to a link-local address" in result.error
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
                                 "https://example.com:99999/", "https://x.com/" + "a" * 2000])
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


def test_redaction_hides_query_values_and_credentials():
    assert url_redact("https://u:p@h.example:8443/p?token=abc&x=1") == (
        "https://h.example:8443/p?token=REDACTED&x=REDACTED")
    assert url_redact("https://h.example:99999/") == "(malformed URL)"
