"""The one outbound guard: every address form an attacker can spell is refused for every
caller (callback delivery, `http` step with a static URL or a `url_expression`, `agent`
provider), nothing reaches a real local listener, and the allow-list opens the way for all.

No packet ever leaves for a non-loopback address: every `connect()` is recorded, and one
to anything but loopback is refused before it happens (a safety net should the guard fail).
"""

import ast
import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from django.core.exceptions import ValidationError
from requests.structures import CaseInsensitiveDict

from auxot import outbound
from auxot.checks import deprecated_settings
from auxot.outbound import (
    RefusedDestination,
    address_check,
    outbound_post,
    outbound_request,
    url_check,
)
from intakes.callbacks import (
    callback_delivery_create,
    callback_delivery_process,
    callback_test_send,
)
from intakes.models import CallbackAttempt, Intake
from tests.callback_helpers import finished_item
from tests.conftest import make_workflow
from tests.fakeserver import FakeServer, Reply
from tests.processes import settings_printed
from workflows.batch import work_item_process
from workflows.models import Provider, Step, StepRun
from workflows.services import work_item_create

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]

# Names the resolver patch answers (a real resolver would be asked otherwise).
RESOLVES = {
    "internal.example": ["10.1.2.3"],
    "rebind.example": ["127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "round-robin.example": ["93.184.216.34", "127.0.0.1"],  # one good answer, one bad
    "receiver.example": ["127.0.0.1"],
    "public.example": ["93.184.216.34"],
}

# (id, URL with {port}, a fragment the refusal names). The listener is on 127.0.0.1:{port}.
FORMS = [
    ("loopback", "http://127.0.0.1:{port}/t", "127.0.0.1 is a loopback address"),
    ("loopback-range", "http://127.0.0.2:{port}/t", "127.0.0.2 is a loopback address"),
    ("short", "http://127.1:{port}/t", "'127.1' is a number in a non-standard form (127.0.0.1)"),
    ("decimal", "http://2130706433:{port}/t", "'2130706433' is a number"),
    ("hex", "http://0x7f000001:{port}/t", "'0x7f000001' is a number"),
    ("octal", "http://0177.0.0.1:{port}/t", "'0177.0.0.1' is a number"),
    ("mixed", "http://0x7f.0.1:{port}/t", "'0x7f.0.1' is a number"),
    ("zero", "http://0:{port}/t", "'0' is a number in a non-standard form (0.0.0.0)"),
    ("percent-encoded", "http://%31%32%37.0.0.1:{port}/t", "'%31%32%37.0.0.1' is percent-encoded"),
    ("fullwidth-digits", "http://\uff11\uff12\uff17.0.0.1:{port}/t", "127.0.0.1 is a loopback"),
    ("trailing-dot", "http://127.0.0.1.:{port}/t", "'127.0.0.1.' is a number"),
    ("localhost", "http://localhost:{port}/t", "localhost does not resolve to a public address"),
    ("localhost-subdomain", "http://app.localhost:{port}/t", "app.localhost does not resolve"),
    ("unspecified", "http://0.0.0.0:{port}/t", "0.0.0.0 is an unspecified"),
    ("userinfo", "http://evil@127.0.0.1:{port}/t", "userinfo"),
    ("userinfo-password", "http://user:pw@127.0.0.1:{port}/t", "userinfo"),
    ("userinfo-public-host", "http://127.0.0.1:{port}@example.com/t", "userinfo"),
    ("backslash", "http://127.0.0.1:{port}\\@example.com/t", "userinfo"),
    ("ipv6-loopback", "http://[::1]:{port}/t", "::1 is a loopback address"),
    ("ipv6-unspecified", "http://[::]:{port}/t", ":: is an unspecified address"),
    ("ipv4-mapped", "http://[::ffff:127.0.0.1]:{port}/t", "IPv4-mapped IPv6 address"),
    ("ipv4-mapped-hex", "http://[::ffff:7f00:1]:{port}/t", "IPv4-mapped IPv6 address"),
    ("ipv4-compatible", "http://[::127.0.0.1]:{port}/t", "IPv4-compatible IPv6 address"),
    ("6to4", "http://[2002:7f00:1::]:{port}/t", "6to4 address embedding 127.0.0.1"),
    ("teredo-client", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/t",
     "Teredo address embedding 127.0.0.1"),
    ("teredo-server", "http://[2001:0:a00:1::]:{port}/t", "Teredo address embedding 10.0.0.1"),
    ("nat64", "http://[64:ff9b::7f00:1]:{port}/t", "NAT64 address embedding 127.0.0.1"),
    ("nat64-local", "http://[64:ff9b:1::a9fe:a9fe]:{port}/t",
     "NAT64 address embedding 169.254.169.254"),
    ("private-10", "http://10.0.0.1:{port}/t", "10.0.0.1 is a private address"),
    ("private-172", "http://172.16.5.4:{port}/t", "172.16.5.4 is a private address"),
    ("private-192", "http://192.168.1.1:{port}/t", "192.168.1.1 is a private address"),
    ("cloud-metadata", "http://169.254.169.254:{port}/t", "169.254.169.254 is a link-local"),
    ("cgnat", "http://100.64.0.1:{port}/t", "carrier-grade NAT"),
    ("multicast", "http://224.0.0.1:{port}/t", "multicast"),
    ("reserved", "http://240.0.0.1:{port}/t", "240.0.0.1 is a reserved address"),
    ("broadcast", "http://255.255.255.255:{port}/t", "broadcast"),
    ("benchmarking", "http://198.18.0.1:{port}/t", "benchmarking"),
    ("documentation", "http://192.0.2.1:{port}/t", "documentation"),
    ("ietf-protocol", "http://192.0.0.8:{port}/t", "IETF protocol assignment"),
    ("ipv6-link-local", "http://[fe80::1]:{port}/t", "link-local"),
    ("ipv6-ula", "http://[fd00::1]:{port}/t", "unique-local"),
    ("ipv6-site-local", "http://[fec0::1]:{port}/t", "site-local"),
    ("ipv6-multicast", "http://[ff02::1]:{port}/t", "multicast"),
    ("ipv6-documentation", "http://[2001:db8::1]:{port}/t", "documentation"),
    ("name-to-private", "http://internal.example:{port}/t",
     "internal.example does not resolve to a public address"),
    ("name-to-loopback", "http://rebind.example:{port}/t",
     "rebind.example does not resolve to a public address"),
    ("name-to-metadata", "http://metadata.example:{port}/t",
     "metadata.example does not resolve to a public address"),
    ("name-to-mapped", "http://mapped.example:{port}/t", "mapped.example does not resolve"),
    ("name-one-bad-answer", "http://round-robin.example:{port}/t",
     "round-robin.example does not resolve to a public address"),
]
# "callback": an intake's own URL (its admin's); "caller-callback": Auxot-Callback-Url;
# "send-test-callback": the admin's "Send test callback" action.
CALLERS = ["callback", "caller-callback", "send-test-callback", "http-static",
           "http-expression", "agent"]


@pytest.fixture
def resolver(monkeypatch):
    """The guard's resolver, answering the test names; other names resolve as usual."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        if host not in RESOLVES:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in RESOLVES[host]]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.fixture
def closed_policy(settings):
    """No allow-list: the address policy applies in full (the test settings open 127.0.0.1)."""
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = []
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = []
    settings.AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = []


def _run(item):
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return item


def _send(caller: str, url: str, cast, cb_intake) -> tuple[str, str]:
    """Make `caller` send to `url`; returns (code, message) of the failure, ("ok", "")."""
    if caller == "send-test-callback":  # the admin's action, to the intake's saved URL
        Intake.objects.filter(pk=cb_intake.pk).update(callback_url=url)
        cb_intake.refresh_from_db()
        result = callback_test_send(intake=cb_intake)
        if result.ok:
            return "ok", ""
        return ("ssrf_refused" if result.error.startswith("refused: ") else "failed"), \
            result.error
    if caller in ("callback", "caller-callback"):
        if caller == "callback":  # saved before the policy changed: checked again when sent
            Intake.objects.filter(pk=cb_intake.pk).update(callback_url=url)
            cb_intake.refresh_from_db()
        item = finished_item(cb_intake, **({} if caller == "callback" else {"callback_url": url}))
        delivery = callback_delivery_create(work_item=item)
        assert delivery.uses_intake_default == (caller == "callback")
        state = callback_delivery_process(delivery_id=delivery.pk)
        error = CallbackAttempt.objects.get(delivery=delivery).error
        return ("ssrf_refused" if error.startswith("refused: ") else state), error
    if caller == "agent":
        Provider.objects.create(org=cast.org_a, name="guarded", base_url=url, model="m")
        workflow = make_workflow(cast.org_a, [("agent", {"provider": "guarded",
                                                         "prompt": "hi"})], name="Agent")
        item = _run(work_item_create(workflow=workflow, input={}))
    else:
        target = {"url": url} if caller == "http-static" else {"url_expression": "input.url"}
        workflow = make_workflow(cast.org_a, [("http", {
            "method": "POST", **target, "headers": {"X-Step-Token": "'s3cret-token'"}})])
        item = _run(work_item_create(workflow=workflow, input={"url": url}))
    if item.status == "completed":
        return "ok", ""
    return item.error["code"], item.error["message"]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("form", "url", "named"), FORMS, ids=[f[0] for f in FORMS])
def test_every_internal_address_form_is_refused_for_every_caller(
        form, url, named, caller, cast, cb_intake, fake_server, connections, resolver,
        closed_policy):
    code, message = _send(caller, url.format(port=fake_server.httpd.server_port), cast,
                          cb_intake)
    assert code == "ssrf_refused", message
    assert named in message
    assert fake_server.requests == [] and connections == []  # nothing sent, not even a SYN


# Host names passing every character rule that DNS cannot carry (a label of over 63
# characters, a name of over 253): the resolver raised UnicodeError out of every way out
# (a step_error, an unhandled error in "Send test callback" and the dispatcher).
LONG_HOSTS = ["a" * 64 + ".example.com", "api." + "b" * 64 + ".example", ("c" * 63 + ".") * 4
              + "com"]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("host", LONG_HOSTS, ids=["label-64", "inner-label-64", "name-256"])
def test_a_host_name_dns_cannot_carry_is_refused_for_every_caller(host, caller, cast, cb_intake,
                                                                   fake_server, connections):
    code, message = _send(caller, f"http://{host}:{fake_server.httpd.server_port}/t", cast,
                          cb_intake)
    assert code in ("ssrf_refused", "bad_request", "bad_config"), message
    assert "not a usable host name" in message
    with pytest.raises(RefusedDestination) as refused:
        url_check(f"https://{host}/", purpose="caller_callback")
    assert refused.value.code == "bad_url"
    assert fake_server.requests == [] and connections == []


@pytest.mark.parametrize("caller", CALLERS)
def test_allowed_network_lets_every_caller_through(caller, cast, cb_intake, fake_server,
                                                   connections, settings):
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    code, message = _send(caller, fake_server.url + "/t", cast, cb_intake)
    assert code in ("ok", "delivered"), message
    assert len(fake_server.requests) == 1


@pytest.mark.parametrize("caller", CALLERS)
def test_allowed_host_lets_every_admins_caller_through(caller, cast, cb_intake, fake_server,
                                                       connections, resolver, closed_policy,
                                                       settings):
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = ["receiver.example"]
    port = fake_server.httpd.server_port
    code, message = _send(caller, f"http://receiver.example:{port}/t", cast, cb_intake)
    if caller == "caller-callback":  # a key holder's URL: the operator's list is not theirs
        assert code == "ssrf_refused", message
        assert fake_server.requests == [] and connections == []
        return
    assert code in ("ok", "delivered"), message
    [request] = fake_server.requests
    assert request["headers"]["Host"] == f"receiver.example:{port}"  # the name is kept
    assert connections == [("127.0.0.1", port)]  # ...the connection is to the checked address


@pytest.mark.parametrize("caller", CALLERS)
def test_allowed_network_does_not_open_its_neighbours(caller, cast, cb_intake, fake_server,
                                                      connections, settings):
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.2/32"]
    settings.AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = ["127.0.0.2/32"]
    code, _ = _send(caller, fake_server.url + "/t", cast, cb_intake)
    assert code == "ssrf_refused"
    assert fake_server.requests == [] and connections == []


@pytest.fixture
def elsewhere():
    server = FakeServer().start()
    yield server
    server.stop()


def test_http_step_does_not_follow_a_redirect(cast, fake_server, elsewhere):
    fake_server.script = [Reply(302, "", {"Location": elsewhere.url + "/internal"})]
    workflow = make_workflow(cast.org_a, [("http", {"url": fake_server.url + "/t"})])
    item = _run(work_item_create(workflow=workflow, input={}))
    assert item.status == "completed"
    assert item.output["status"] == 302
    assert len(fake_server.requests) == 1 and elsewhere.requests == []


def test_agent_provider_does_not_follow_a_redirect(cast, fake_server, elsewhere):
    fake_server.script = [Reply(307, "", {"Location": elsewhere.url + "/v1/chat/completions"})]
    Provider.objects.create(org=cast.org_a, name="moved", base_url=fake_server.url + "/v1",
                            model="m")
    workflow = make_workflow(cast.org_a, [("agent", {"provider": "moved", "prompt": "hi"})])
    item = _run(work_item_create(workflow=workflow, input={}))
    assert item.status == "failed"
    assert item.error["code"] == "provider_error"
    assert "307 (redirects are not followed)" in item.error["message"]
    assert elsewhere.requests == []


def test_environment_proxies_are_ignored(cast, fake_server, elsewhere, monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", elsewhere.url)
    monkeypatch.setenv("http_proxy", elsewhere.url)
    workflow = make_workflow(cast.org_a, [("http", {"url": fake_server.url + "/t"})])
    item = _run(work_item_create(workflow=workflow, input={}))
    assert item.status == "completed"
    assert len(fake_server.requests) == 1 and elsewhere.requests == []


def test_a_refusal_fails_at_once_and_is_not_retried(cast, fake_server, closed_policy,
                                                    connections):
    workflow = make_workflow(cast.org_a, [("http", {"url_expression": "input.url"})])
    item = _run(work_item_create(workflow=workflow, input={"url": fake_server.url}))
    assert item.status == "failed" and item.error["code"] == "ssrf_refused"
    assert StepRun.objects.filter(work_item=item).count() == 1
    assert fake_server.requests == [] and connections == []


def test_a_malformed_url_from_an_expression_is_a_bad_request_not_a_refusal(cast):
    workflow = make_workflow(cast.org_a, [("http", {"url_expression": "input.url"})])
    item = _run(work_item_create(workflow=workflow, input={"url": "http://exa mple.com/"}))
    assert item.status == "failed" and item.error["code"] == "bad_request"


# --- Headers: what a payload or a secret puts in one is checked by the guard -----------------

# (id, value) an http step's templated header (a caller's payload) or a secret (an operator's
# grant holds any text but NUL) may carry, that must never go out as it is: CR/LF would split
# the header, other controls are read differently by receivers and their proxies, and a
# character Latin-1 cannot encode failed half-way through the request with an error quoting
# it and its position (a `step_error`, in the poll: a secret's character, too).
BAD_HEADER_VALUES = [
    ("crlf", "ok\r\nX-Injected: 1"), ("lf", "ok\nX-Injected: 1"), ("cr", "ok\rX-Injected: 1"),
    ("nul", "ok\x00X-Injected: 1"), ("vertical-tab", "ok\x0bX-Injected"),
    ("escape", "ok\x1b[2JX-Injected"), ("delete", "ok\x7fX-Injected"),
    ("leading-space", " X-Injected"), ("leading-tab", "\tX-Injected"),
    ("euro", "sk-\u20ac-X-Injected"), ("line-separator", "ok\u2028X-Injected: 1"),
    ("emoji", "ok\U0001f600X-Injected"),
]
BAD_HEADER_NAMES = ["X Ticket", "X:Ticket", "X-Ticket\r\nX-Injected", "X-Tick\u00e9t", ""]
# Whose header: a payload templated by an http step, a secret in an http step's
# secret_headers, a provider's API key (both after the reference's "Bearer " prefix).
HEADER_CALLERS = ["http-payload", "http-secret", "agent-key"]


def _send_header(caller: str, value: str, url: str, cast, monkeypatch, settings) -> dict:
    if caller == "http-payload":
        workflow = make_workflow(cast.org_a, [("http", {"method": "POST", "url": url,
                                                        "headers": {"X-Ticket": "input.v"}})])
        return _run(work_item_create(workflow=workflow, input={"v": value})).error or {}
    monkeypatch.setenv("HEADER_TOKEN", value)
    settings.AUXOT_OPERATOR_SECRETS = {cast.org_a.slug: {"HEADER_TOKEN": None}}
    if caller == "http-secret":
        workflow = make_workflow(cast.org_a, [("http", {"method": "POST", "url": url,
                                 "secret_headers": {"X-Ticket": {"env": "HEADER_TOKEN"}}})])
    else:
        Provider.objects.create(org=cast.org_a, name="keyed", base_url=url, model="m",
                                api_key_env="HEADER_TOKEN")
        workflow = make_workflow(cast.org_a, [("agent", {"provider": "keyed",
                                                         "prompt": "hi"})], name="Agent")
    return _run(work_item_create(workflow=workflow, input={})).error or {}


def _shows_no_value(message: str, value: str) -> bool:
    return "X-Injected" not in message and "position" not in message and not any(
        not char.isascii() and char in message for char in value)


def _reachable(form: str, caller: str) -> bool:
    """Whether this caller can hold this value at all. NUL: no caller can (a payload with
    one is refused when triggered, 422, jsonb could not store it; an environment variable
    cannot hold it; answers' NULs become U+FFFD), so the guard's own test below tries it.
    After an API key's "Bearer " prefix, leading whitespace is whitespace inside."""
    return not (form == "nul" or (caller == "agent-key" and form.startswith("leading")))


@pytest.mark.parametrize(("form", "value", "caller"), [
    pytest.param(form, value, caller, id=f"{form}-{caller}")
    for form, value in BAD_HEADER_VALUES for caller in HEADER_CALLERS
    if _reachable(form, caller)])
def test_a_header_value_that_cannot_be_sent_is_refused_for_every_caller(
        form, value, caller, cast, fake_server, connections, monkeypatch, settings):
    error = _send_header(caller, value, fake_server.url + "/t", cast, monkeypatch, settings)
    assert error.get("code") == "bad_request", error
    assert "X-Ticket" in error["message"] or "Authorization" in error["message"]
    assert _shows_no_value(error["message"], value), error["message"]
    assert fake_server.requests == [] and connections == []  # nothing sent, not even a SYN


@pytest.mark.parametrize("caller", HEADER_CALLERS)
def test_a_header_value_latin1_can_carry_still_goes_out(caller, cast, fake_server,
                                                       monkeypatch, settings):
    error = _send_header(caller, "caf\u00e9 ok\tfine", fake_server.url + "/v1", cast,
                         monkeypatch, settings)
    assert error == {} or error["code"] == "bad_agent_output", error  # the fake's reply
    [request] = fake_server.requests
    sent = request["headers"].get("X-Ticket") or request["headers"]["Authorization"]
    assert sent.endswith("caf\u00e9 ok\tfine")


@pytest.mark.parametrize("way", ["requests", "lean"])
def test_both_ways_out_refuse_a_header_before_connecting(way, fake_server, connections):
    """The guard itself (the callback dispatcher's lean POST too), for values and names."""
    post = {"requests": _post_request, "lean": _post_lean}[way]
    for _, value in BAD_HEADER_VALUES:
        with pytest.raises(RefusedDestination) as refused:
            post(fake_server.url + "/t", headers={"X-Ticket": value})
        assert refused.value.code == "bad_header"
        assert _shows_no_value(str(refused.value), value), str(refused.value)
    for name in BAD_HEADER_NAMES:  # an admin's configuration: the name is shown
        with pytest.raises(RefusedDestination, match="is not a valid header name") as refused:
            post(fake_server.url + "/t", headers={name: "ok"})
        assert refused.value.code == "bad_header"
    for name, value in CONNECTION_HEADERS:
        with pytest.raises(RefusedDestination, match=f"{name} is written by") as refused:
            post(fake_server.url + "/t", headers={name: value})
        assert refused.value.code == "bad_header"
    assert fake_server.requests == [] and connections == []


# Headers the connection writes from the URL and the body: (name, a value an attacker wants).
# A Host reaches another virtual host behind the allowed host's address; Transfer-Encoding went
# out beside requests' Content-Length (a receiver and its proxy then frame the body apart).
CONNECTION_HEADERS = [("Host", "admin.internal"), ("host", "admin.internal"),
                      ("Content-Length", "0"), ("Transfer-Encoding", "chunked"),
                      ("Connection", "Upgrade"), ("Upgrade", "websocket"),
                      ("Keep-Alive", "timeout=600"), ("TE", "trailers"),
                      ("Trailer", "X-Injected"), ("Proxy-Connection", "keep-alive")]


@pytest.mark.parametrize(("name", "value"), CONNECTION_HEADERS)
def test_a_step_cannot_set_a_header_the_connection_writes(name, value, cast, fake_server,
                                                          connections, resolver,
                                                          closed_policy, settings):
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = ["receiver.example"]  # this name, no other
    url = f"http://receiver.example:{fake_server.httpd.server_port}/t"
    workflow = make_workflow(cast.org_a, [("http", {"method": "POST", "url": url,
                                                    "body": "input", "headers": {}})])
    # Saved before the rule (the admin's form refuses it now): the step's config is checked
    # again when it runs, and the guard would refuse it anyway (the test below).
    Step.objects.filter(workflow=workflow).update(config={
        "method": "POST", "url": url, "body": "input", "headers": {name: "input.v"}})
    error = _run(work_item_create(workflow=workflow, input={"v": value})).error
    assert error["code"] == "bad_config" and f"headers: {name} is written by" in \
        error["message"], error
    assert fake_server.requests == [] and connections == []


@pytest.mark.parametrize("name", BAD_HEADER_NAMES + [name for name, _ in CONNECTION_HEADERS])
@pytest.mark.parametrize("field", ["headers", "secret_headers"])
def test_an_http_steps_header_name_is_checked_when_saved(field, name, cast):
    value = "input.v" if field == "headers" else {"secret": "TOKEN"}
    step = Step(workflow=make_workflow(cast.org_a, []), position=1, name="h", kind="http",
                config={"url": "https://api.example.com/", field: {name: value}})
    with pytest.raises(ValidationError, match=r"is not a header name|is written by the conn"):
        step.full_clean()


# --- Save time: admins see a refused URL before anything runs --------------------------------

@pytest.mark.parametrize(("url", "named"), [
    ("http://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
    ("http://2130706433/", "'2130706433' is a number in a non-standard form (127.0.0.1)"),
    ("https://user:pw@api.example.com/", "may not carry user:password@"),
    ("http://[::1]:8080/", "::1 is a loopback address")])
def test_static_http_step_url_is_refused_when_saved(url, named, cast, closed_policy):
    workflow = make_workflow(cast.org_a, [])
    step = Step(workflow=workflow, position=1, name="call", kind="http", config={"url": url})
    with pytest.raises(ValidationError) as caught:
        step.full_clean()
    [message] = caught.value.message_dict["config"]
    assert message.startswith("url: The http step URL") or message.startswith("url: ")
    assert named in message


@pytest.mark.parametrize(("url", "named"), [
    ("http://10.0.0.1/v1", "10.0.0.1 is a private address; agent providers may not go there"),
    ("http://localhost:11434/v1", "localhost does not resolve to a public address"),
    ("http://0x7f000001/v1", "'0x7f000001' is a number in a non-standard form"),
    ("http://key@api.example.com/v1", "The provider URL may not carry user:password@")])
def test_provider_base_url_is_refused_when_saved(url, named, cast, closed_policy):
    provider = Provider(org=cast.org_a, name="p", base_url=url, model="m")
    with pytest.raises(ValidationError) as caught:
        provider.full_clean()
    assert any(named in message for message in caught.value.message_dict["base_url"])


def test_public_and_allowed_urls_save(cast, settings):
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    workflow = make_workflow(cast.org_a, [])
    Step(workflow=workflow, position=1, name="a", kind="http",
         config={"url": "https://api.example.com/x"}).full_clean()
    Step(workflow=workflow, position=2, name="b", kind="http",
         config={"url": "http://10.20.3.4/x"}).full_clean()
    Provider(org=cast.org_a, name="p", base_url="http://10.20.0.9:11434/v1",
             model="m").full_clean()


# --- Unit level: a public destination passes (no traffic is sent anywhere) ------------------

@pytest.mark.parametrize("url", ["https://api.example.com/v1", "http://93.184.216.34/",
                                 "https://[2606:4700:4700::1111]/", "http://[64:ff9b::808:808]/",
                                 "https://[2002:808:808::1]/", "https://b\u00fccher.example/"])
def test_a_public_destination_passes_the_check(url, closed_policy):
    assert url_check(url, purpose="http") == url
    assert url_check(url, purpose="agent") == url


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111",
                                     "64:ff9b::808:808"])
def test_a_public_address_passes_the_connection_check(address, closed_policy):
    address_check(address)  # raises if refused


def test_a_name_resolving_to_a_public_address_passes_at_connect(resolver, closed_policy):
    assert outbound._resolve_checked("public.example", 443) == "93.184.216.34"
    assert "public.example" in resolver


def test_callbacks_need_https_unless_http_is_allowed(settings, closed_policy):
    settings.AUXOT_CALLBACK_ALLOW_HTTP = False
    with pytest.raises(RefusedDestination, match="must use https") as caught:
        url_check("http://api.example.com/hook", purpose="callback")
    assert caught.value.code == "bad_url"
    assert url_check("http://api.example.com/x", purpose="http")  # steps may use http://
    assert url_check("http://api.example.com/v1", purpose="agent")


def test_only_callbacks_refuse_a_fragment():
    with pytest.raises(RefusedDestination, match="fragment"):
        url_check("https://api.example.com/hook#x", purpose="callback")
    assert url_check("https://api.example.com/x#y", purpose="http")


def test_the_response_body_is_capped(fake_server):
    fake_server.script = [Reply(200, "x" * 5000)]
    response = outbound_request("GET", fake_server.url + "/big", purpose="http", timeout=5,
                                max_bytes=100)
    assert response.status_code == 200 and response.content == b"x" * 100


# --- Settings ---------------------------------------------------------------------------------

def _settings_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess:
    return settings_printed(env, "AUXOT_OUTBOUND_ALLOWED_NETWORKS", "AUXOT_OUTBOUND_ALLOWED_HOSTS")


def test_deprecated_callback_networks_are_merged_into_the_outbound_list():
    done = _settings_in_subprocess({
        "AUXOT_OUTBOUND_ALLOWED_NETWORKS": "10.20.0.0/16",
        "AUXOT_CALLBACK_ALLOWED_NETWORKS": "192.168.7.0/24,10.20.0.0/16",
        "AUXOT_OUTBOUND_ALLOWED_HOSTS": "Ollama.Internal.,llm.corp"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "['10.20.0.0/16', '192.168.7.0/24'] ['ollama.internal', 'llm.corp']")


def test_nothing_is_allowed_by_default_and_only_the_demo_opens_loopback():
    from intakes.demo.seed import DEMO_ENV

    done = _settings_in_subprocess({})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []"
    assert DEMO_ENV["AUXOT_OUTBOUND_ALLOWED_NETWORKS"] == "127.0.0.0/8,::1/128"
    assert "AUXOT_CALLBACK_ALLOWED_NETWORKS" not in DEMO_ENV


@pytest.mark.parametrize(("name", "value"), [("AUXOT_OUTBOUND_ALLOWED_NETWORKS", "10.0.0.0/33"),
                                             ("AUXOT_CALLBACK_ALLOWED_NETWORKS", "nonsense"),
                                             ("AUXOT_OUTBOUND_ALLOWED_HOSTS", "*.corp"),
                                             ("AUXOT_OUTBOUND_ALLOWED_HOSTS", "10.0.0.0/8")])
def test_a_bad_allow_list_fails_at_start_up(name, value):
    done = _settings_in_subprocess({name: value})
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr


def test_the_deprecated_setting_is_reported_by_the_system_check(settings):
    assert deprecated_settings(None) == []
    settings.AUXOT_CALLBACK_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    [warning] = deprecated_settings(None)
    assert warning.id == "auxot.W002" and "AUXOT_OUTBOUND_ALLOWED_NETWORKS" in warning.msg


# --- One guard: no other server module sends HTTP by itself ------------------------------------

SERVER_PACKAGES = ["auxot", "apikeys", "workflows", "intakes"]
EXEMPT = {"auxot/outbound.py", "auxot/client.py", "auxot/cli.py"}  # the callers' client
FORBIDDEN_CALLS = {"request", "get", "post", "put", "patch", "delete", "head", "options",
                   "Session", "session", "urlopen", "PoolManager", "HTTPConnection",
                   "HTTPSConnection", "Client", "AsyncClient", "create_connection"}
NETWORK_MODULES = ("requests", "urllib3", "urllib.request", "http.client", "httpx", "aiohttp")


def _outbound_uses(path: Path) -> list[str]:
    """Calls like requests.post(...), and imports of sending functions from HTTP libraries."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner.startswith(NETWORK_MODULES) and node.func.attr in FORBIDDEN_CALLS:
                found.append(f"{path}:{node.lineno} {owner}.{node.func.attr}()")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(NETWORK_MODULES):
            names = {alias.name for alias in node.names} & FORBIDDEN_CALLS
            if names:
                found.append(f"{path}:{node.lineno} from {node.module} import {names}")
    return found


def test_only_the_guard_sends_http_from_the_server():
    offenders = []
    for package in SERVER_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if str(path.relative_to(ROOT)) not in EXEMPT and "migrations" not in path.parts:
                offenders += _outbound_uses(path)
    assert offenders == []


def test_the_scan_finds_a_direct_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import requests\nfrom urllib.request import urlopen\n"
                      "requests.post('http://x')\nrequests.Session()\n")
    assert len(_outbound_uses(sample)) == 3


# --- What a member with an API key sees, and what the admin trace shows -----------------------

def test_member_key_cannot_aim_a_step_at_loopback_and_sees_why(
        api, client, cast, member_token, fake_server, connections, closed_policy):
    from intakes.services import intake_create
    from tests.conftest import bearer, trigger

    workflow = make_workflow(cast.org_a, [("http", {
        "method": "POST", "url_expression": "input.url",
        "headers": {"X-Step-Token": "'s3cret-token'"}})], name="Fetch")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Fetch",
                           created_by=cast.admin_a)
    url = f"http://127.1:{fake_server.httpd.server_port}/admin"
    work_id = trigger(api, intake.pk, member_token, {"url": url}).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    body = api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(member_token)).json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "ssrf_refused" and "'127.1'" in body["error"]["message"]
    client.force_login(cast.admin_a)
    page = client.get(f"/admin/workflows/workitem/{work_id}/change/").content.decode()
    assert "ssrf_refused" in page and "127.1" in page
    assert fake_server.requests == [] and connections == []


# --- Keep-alive: shared connections with the same guarantees ----------------------------------

class _KeepAliveHandler(BaseHTTPRequestHandler):
    """Answers every request on the same connection (HTTP/1.1) and records which connection
    (the client's port) carried it, with its headers."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        server = self.server
        with server.lock:
            index = len(server.seen)
            server.seen.append((self.client_address[1], dict(self.headers.items())))
        if index in server.hang_up_on:  # the request arrived; no answer, the line goes dead
            self.close_connection = True
            return
        if server.barrier is not None:
            server.barrier.wait(timeout=10)
        time.sleep(server.delay)
        body = server.body
        self.send_response(200)
        for name, value in server.extra_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if index not in server.dribble_on:
            self.wfile.write(body)
            return
        for byte in body:  # every byte within the read timeout; the whole never in time
            try:
                self.wfile.write(bytes([byte]))
            except OSError:
                return
            time.sleep(0.1)

    do_POST = do_GET

    def log_message(self, *args):
        pass


class _KeepAliveServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, handler=_KeepAliveHandler):
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.seen: list[tuple[int, dict]] = []
        self.body, self.delay, self.extra_headers = b"ok", 0.0, []
        self.dribble_on: set[int] = set()
        self.hang_up_on: set[int] = set()
        self.barrier: threading.Barrier | None = None
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_port}/hook"

    def connections_seen(self) -> int:
        return len({port for port, _ in self.seen})


@pytest.fixture
def keepalive():
    """A keep-alive receiver, with the shared pools empty before and after."""
    outbound.outbound_pools_close()
    server = _KeepAliveServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    outbound.outbound_pools_close()
    server.shutdown()
    server.server_close()


def _post_request(url: str, **kwargs):
    return outbound_request("POST", url, purpose="http", timeout=kwargs.pop("timeout", 5),
                            data=b"{}", **kwargs)


def _post_lean(url: str, *, headers: dict | None = None, **kwargs):
    answer = outbound_post(url, purpose="http", timeout=kwargs.pop("timeout", 5), body=b"{}",
                           headers=headers or {}, **kwargs)
    return SimpleNamespace(status_code=answer.status, content=answer.content,
                           headers=CaseInsensitiveDict(answer.headers))


@pytest.fixture(params=["outbound_request", "outbound_post"])
def post(request):
    """Both ways out (requests' objects for steps and providers, the lean POST for callbacks):
    every guarantee below holds for each."""
    return {"outbound_request": _post_request, "outbound_post": _post_lean}[request.param]


def test_a_connection_is_kept_alive_and_reused_across_calls_and_threads(keepalive, connections,
                                                                         post):
    for _ in range(3):
        assert post(keepalive.url).content == b"ok"
    with ThreadPoolExecutor(2) as pool:
        assert [r.status_code for r in pool.map(lambda _: post(keepalive.url), range(2))] \
            == [200, 200]
    assert len(keepalive.seen) == 5
    assert keepalive.connections_seen() == len(connections) <= 2


def test_no_cookie_or_header_carries_over_to_the_next_request(keepalive, post):
    keepalive.extra_headers = [("Set-Cookie", "session=tenant-a; Path=/")]
    first = post(keepalive.url, headers={"Authorization": "Bearer tenant-a", "X-Tenant": "a"})
    assert first.headers["Set-Cookie"] == "session=tenant-a; Path=/"
    post(keepalive.url)
    [(port_a, headers_a), (port_b, headers_b)] = keepalive.seen
    assert port_a == port_b  # the same connection carried both
    assert headers_a["X-Tenant"] == "a"
    assert not {"Cookie", "Authorization", "X-Tenant"} & set(headers_b)


def test_a_settings_change_never_reuses_a_connection_checked_under_other_settings(
        keepalive, resolver, closed_policy, settings, post):
    url = f"http://receiver.example:{keepalive.server_port}/hook"
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = ["receiver.example"]
    assert post(url).status_code == 200  # the connection stays open in the pool
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = []
    with pytest.raises(RefusedDestination,
                       match=r"receiver\.example does not resolve to a public address"):
        post(url)
    settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert post(url).status_code == 200
    assert len(keepalive.seen) == 2


class _ClosesIdleHandler(_KeepAliveHandler):
    timeout = 0.2  # the server closes a connection idle for 0.2 s (sends its FIN)


def test_a_connection_the_server_closed_while_idle_does_not_fail_the_next_request(post):
    outbound.outbound_pools_close()
    server = _KeepAliveServer(_ClosesIdleHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert post(server.url).status_code == 200
        time.sleep(0.5)  # the server has closed it, well within KEEPALIVE_IDLE_SECONDS
        assert post(server.url).status_code == 200
        assert server.connections_seen() == 2 and len(server.seen) == 2
    finally:
        outbound.outbound_pools_close()
        server.shutdown()
        server.server_close()


def test_a_connection_idle_for_too_long_is_not_reused(keepalive, monkeypatch, post):
    post(keepalive.url)
    post(keepalive.url)  # well within KEEPALIVE_IDLE_SECONDS: reused
    # Now any idle time is too long (the server would still take it; its own close could
    # race the request): the third goes out on a new connection.
    monkeypatch.setattr(outbound, "KEEPALIVE_IDLE_SECONDS", 0.0)
    post(keepalive.url)
    first, second, third = (port for port, _ in keepalive.seen)
    assert first == second != third


def test_a_failure_on_a_reused_connection_is_not_retried(keepalive, post):
    keepalive.hang_up_on = {1}
    post(keepalive.url)
    with pytest.raises(requests.ConnectionError):
        post(keepalive.url)  # the request reached the server: sending it again would repeat it
    assert len(keepalive.seen) == 2
    assert post(keepalive.url).status_code == 200  # a fresh connection
    assert keepalive.connections_seen() == 2


def test_an_answer_cut_at_the_cap_closes_the_connection_a_whole_one_keeps_it(keepalive,
                                                                             post):
    keepalive.body = b"x" * 5000
    assert post(keepalive.url, max_bytes=100).content == b"x" * 100  # the rest left unread
    assert post(keepalive.url, max_bytes=5000).content == b"x" * 5000  # read to its end
    post(keepalive.url)
    first, second, third = (port for port, _ in keepalive.seen)
    assert first != second == third


def test_the_deadline_covers_a_name_server_that_does_not_answer(keepalive, monkeypatch,
                                                               settings, post):
    """A hostile domain's name server holds the lookup; the sender is back on time."""
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = ["slow.example"]
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "slow.example":
            time.sleep(8)  # far past the deadline: the lookup's thread is left to it
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)
    started = time.monotonic()
    with pytest.raises(requests.Timeout, match=r"no complete answer within 0\.5 s"):
        post(f"http://slow.example:{keepalive.server_port}/hook", timeout=0.5)
    assert time.monotonic() - started < 4.0  # the deadline (0.5 s), not the lookup (8 s)
    assert keepalive.seen == []  # nothing was sent
    assert post(keepalive.url).status_code == 200  # an address: no lookup, no thread


def test_the_deadline_cuts_a_dribbling_answer_on_a_reused_connection(keepalive, post):
    keepalive.body = b"x" * 20  # 2 s at one byte per 0.1 s
    keepalive.dribble_on = {1}
    post(keepalive.url)
    started = time.monotonic()
    with pytest.raises(requests.Timeout, match=r"no complete answer within 0\.5 s"):
        post(keepalive.url, timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert post(keepalive.url).content == b"x" * 20  # not on the cut connection
    first, second, third = (port for port, _ in keepalive.seen)
    assert first == second != third


def test_a_finished_exchange_deadline_never_cuts_the_next_one_on_its_connection(
        keepalive, post):
    post(keepalive.url, timeout=0.3)
    keepalive.delay = 0.6  # answers after the first exchange's deadline has passed
    assert post(keepalive.url, timeout=5).content == b"ok"
    assert keepalive.connections_seen() == 1


def test_concurrent_requests_never_wait_for_a_connection_and_few_stay_idle(keepalive,
                                                                           post):
    senders = outbound.POOL_IDLE_PER_HOST + 4
    keepalive.barrier = threading.Barrier(senders)  # answers only once all are in at once
    with ThreadPoolExecutor(senders) as pool:
        codes = list(pool.map(lambda _: post(keepalive.url).status_code, range(senders)))
    assert codes == [200] * senders
    [host_pool] = outbound._adapter("http").poolmanager.pools._container.values()
    idle = [conn for conn in host_pool.pool.queue if conn is not None and conn.sock is not None]
    assert len(idle) == outbound.POOL_IDLE_PER_HOST


def test_host_pools_are_bounded(keepalive, monkeypatch, settings, post):
    monkeypatch.setattr(outbound, "POOL_HOSTS", 3)
    names = [f"h{i}.example" for i in range(5)]
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = names
    real = socket.getaddrinfo
    monkeypatch.setattr(outbound.socket, "getaddrinfo", lambda host, *args, **kwargs: real(
        "127.0.0.1" if host in names else host, *args, **kwargs))
    for name in names:
        post(f"http://{name}:{keepalive.server_port}/hook")
    assert len(outbound._adapter("http").poolmanager.pools) == 3


def test_a_forked_process_starts_with_empty_pools_and_its_own_watchdog(keepalive, post):
    post(keepalive.url)  # the parent now has an idle connection and a watchdog thread
    keepalive.body = b"x" * 20
    keepalive.dribble_on = {1}
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            if not outbound._adapters:
                started = time.monotonic()
                try:
                    post(keepalive.url, timeout=0.5)
                except requests.Timeout:
                    code = 0 if time.monotonic() - started < 1.5 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    first, second = (port for port, _ in keepalive.seen)
    assert first != second  # the child opened its own connection


@pytest.fixture
def tls_keepalive(keepalive, tmp_path, monkeypatch):
    """The keep-alive receiver behind TLS, with a certificate for 127.0.0.1 the guard trusts."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    keepalive.socket = context.wrap_socket(keepalive.socket, server_side=True)
    keepalive.scheme = "https"
    monkeypatch.setattr(outbound, "VERIFY", str(cert))
    return keepalive


def test_the_deadline_cuts_a_dribbling_answer_over_tls_new_and_reused(tls_keepalive, post):
    tls_keepalive.body = b"x" * 20
    tls_keepalive.dribble_on = {0, 2}
    for _ in range(2):  # a new connection, then (after a good answer) a reused one
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            post(tls_keepalive.url, timeout=0.5)
        assert time.monotonic() - started < 1.5
        assert post(tls_keepalive.url).content == b"x" * 20
    first, second, third, fourth = (port for port, _ in tls_keepalive.seen)
    assert first != second == third != fourth


def test_a_certificate_no_trusted_authority_signed_is_refused(tls_keepalive, monkeypatch,
                                                                post):
    monkeypatch.setattr(outbound, "VERIFY", True)  # the CA bundle, without the test's own CA
    with pytest.raises(requests.exceptions.SSLError):
        post(tls_keepalive.url)
    assert tls_keepalive.seen == []  # nothing was sent over the unverified connection


def test_one_watchdog_thread_serves_every_deadline(keepalive, monkeypatch, post):
    post(keepalive.url)  # the watchdog thread exists from the first request on
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start",
                        lambda self: started.append(self.name) or start(self))
    for _ in range(5):
        post(keepalive.url)
    assert started == []  # no Timer thread per request
    assert [t.name for t in threading.enumerate()].count("auxot-outbound-deadline") == 1


# --- The lean POST (callbacks): the same request and answer as requests would give ------------

def test_the_lean_post_sends_what_requests_would_and_reads_the_answer_the_same(keepalive):
    import gzip

    keepalive.body = gzip.compress(b"x" * 300)
    keepalive.extra_headers = [("Content-Encoding", "gzip"), ("X-Repeated", "a"),
                               ("X-Repeated", "b"), ("Retry-After", "7")]
    headers = {"Content-Type": "application/json", "user-agent": "Auxot-Webhooks/1",
               "webhook-id": "msg_1"}
    answer = outbound_post(keepalive.url, purpose="callback", timeout=5, body=b'{"a": 1}',
                           headers=headers, max_bytes=100)
    via_requests = outbound_request("POST", keepalive.url, purpose="callback", timeout=5,
                                    data=b'{"a": 1}', headers=headers, max_bytes=100)
    assert answer.status == via_requests.status_code == 200
    assert answer.content == via_requests.content == b"x" * 100  # decoded, then capped
    assert answer.headers["x-repeated"] == via_requests.headers["X-Repeated"] == "a, b"
    assert answer.headers["retry-after"] == "7" and all(name.islower() for name in answer.headers)
    (_, lean), (_, full) = keepalive.seen
    assert {k.lower(): v for k, v in lean.items()} == {
        k.lower(): v for k, v in full.items() if k.lower() != "user-agent"} | {
        "user-agent": "Auxot-Webhooks/1"}
    assert lean["Content-Length"] == "8" and lean["Accept-Encoding"] == full["Accept-Encoding"]


def test_the_lean_post_does_not_follow_a_redirect(fake_server, elsewhere):
    fake_server.script = [Reply(302, "", headers={"Location": elsewhere.url + "/x"})]
    answer = outbound_post(fake_server.url + "/hook", purpose="callback", timeout=5, body=b"{}",
                           headers={})
    assert answer.status == 302 and answer.headers["location"].startswith(elsewhere.url)
    assert elsewhere.requests == []


def test_the_lean_post_names_failures_as_requests_does(keepalive):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(requests.ConnectionError) as refused:
        outbound_post(f"http://127.0.0.1:{port}/hook", purpose="callback", timeout=5,
                      body=b"{}", headers={})
    assert isinstance(refused.value.__cause__.__cause__, ConnectionRefusedError)
    keepalive.delay = 1.0
    with pytest.raises(requests.Timeout, match=r"no complete answer within 0\.3 s"):
        outbound_post(keepalive.url, purpose="callback", timeout=0.3, body=b"{}", headers={})


@pytest.mark.parametrize("post", [_post_request, _post_lean], ids=["requests", "lean"])
def test_a_non_ascii_host_goes_out_in_its_idna_form(keepalive, monkeypatch, settings, post):
    settings.AUXOT_OUTBOUND_ALLOWED_HOSTS = ["xn--bcher-kva.example"]
    real = socket.getaddrinfo
    asked = []

    def getaddrinfo(host, *args, **kwargs):
        asked.append(host)
        return real("127.0.0.1" if host == "xn--bcher-kva.example" else host, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)
    assert post(f"http://bücher.example:{keepalive.server_port}/bücher").status_code == 200
    [(_, headers)] = keepalive.seen
    assert headers["Host"] == f"xn--bcher-kva.example:{keepalive.server_port}"
    assert asked[0] == "xn--bcher-kva.example" and "bücher.example" not in asked


# --- An answer in tiny chunks costs the sender little CPU -----------------------------------

@pytest.fixture
def chunked_receiver():
    """Answers with a chunked body of `size`-byte chunks, as fast as the sender reads, until
    `total` bytes (or for ever: None)."""
    listener = socket.create_server(("127.0.0.1", 0))
    shape = {"size": 1, "total": None}

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                piece = b"%x\r\n%s\r\n" % (shape["size"], b"x" * shape["size"])
                block = piece * max(1, 65536 // len(piece))
                sent = 0
                while shape["total"] is None or sent < shape["total"]:
                    conn.sendall(block)
                    sent += len(block) // len(piece) * shape["size"]
                conn.sendall(b"0\r\n\r\n")
                while conn.recv(65536):  # closed by the sender first: no reset of its read
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    yield shape, thread, f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    listener.close()


@pytest.mark.parametrize(("size", "total", "read"), [
    (1, None, outbound.MAX_RESPONSE_READS),  # cut after so many pieces, not at the timeout
    (4096, 9 * 1024 * 1024, outbound.MAX_RESPONSE_BYTES),  # a whole answer, in one buffer
], ids=["one-byte-chunks", "4k-chunks"])
def test_an_answer_in_small_chunks_costs_little_cpu(size, total, read, chunked_receiver, post):
    shape, thread, url = chunked_receiver
    shape.update(size=size, total=total)
    thread.start()
    started = time.process_time()
    response = post(url, timeout=10)
    # Before: one-byte chunks kept the sender busy for the whole timeout (10 s of CPU, then
    # a Timeout); 4 KiB chunks cost about 3 s of CPU per 8 MiB (each chunk copied it all).
    assert time.process_time() - started < 2
    assert response.status_code == 200 and len(response.content) == read


def _gzip_bomb(megabytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    zeros = b"\0" * (1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


@pytest.mark.parametrize("way", ["outbound_request", "outbound_post"])
def test_a_compressed_answer_is_cut_as_decoded_never_inflated_whole(way, fake_server):
    """A gzip answer of 256 KiB inflates to 256 MiB: both ways out decode it piece by piece
    (urllib3 >= 2.6 bounds each piece) and stop at MAX_RESPONSE_BYTES decoded."""
    bomb = _gzip_bomb(256)
    fake_server.script = [Reply(200, bomb, {"Content-Encoding": "gzip",
                                            "Content-Type": "application/octet-stream"})]
    tracemalloc.start()
    try:
        if way == "outbound_request":
            body = outbound.outbound_request("GET", fake_server.url + "/bomb", purpose="http",
                                             timeout=30).content
        else:
            body = outbound_post(fake_server.url + "/bomb", purpose="callback", timeout=30,
                                 body=b"{}", headers={}).content
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(body) == outbound.MAX_RESPONSE_BYTES
    assert peak < 5 * outbound.MAX_RESPONSE_BYTES  # not the 256 MiB it inflates to
