"""A header the application reads as one value, sent twice, is refused before the view runs.

gunicorn (and runserver's and wsgiref's handlers) join a repeated field into one environ
value with a comma: `Idempotency-Key: a` + `Idempotency-Key: b` reached the view as the valid
key `a,b`. Every header the code reads is found here from the source and must be classified
in auxot/singleheaders.py: a header read later without being classified fails
test_every_header_the_code_reads_is_classified. Each single-valued one is then sent twice to
a real gunicorn (the web process), and one to runserver (`make run`) and the metrics exporter.
"""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from apikeys.services import apikey_issue
from auxot.singleheaders import (
    COOKIE,
    LIST_VALUED,
    NOT_DECIDING,
    SINGLE_VALUED,
    canonical,
    repeated_header,
)
from tests.processes import ROOT, Gunicorn, free_port, process_env, wait_for
from workflows.models import WorkItem

SERVER_PACKAGES = ("auxot", "apikeys", "intakes", "workflows")
# How the code reads a request header: an environ/META key, or Django's request.headers.
_META_KEY = re.compile(r"""["'](?:HTTP_([A-Z0-9_]+)|(CONTENT_TYPE|CONTENT_LENGTH))["']""")
_REQUEST_HEADERS = re.compile(r"""request\.headers(?:\.get\(|\[)\s*["']([A-Za-z0-9-]+)["']""")
# Read by DRF or gunicorn themselves, not by a line of ours or a module scanned below.
READ_BY_THE_FRAMEWORK = {"accept": "DRF's content negotiation (auxot/errors.py)"}
# Besides the modules of settings.MIDDLEWARE (Django's and whitenoise's), the framework
# modules that read a request's headers for them: the request's host, scheme and cookies
# (get_host, is_secure, COOKIES), and whitenoise's static file responses.
FRAMEWORK_MODULES = ("django.http.request", "whitenoise.responders")
_FRAMEWORK_META_KEY = re.compile(r"""["']HTTP_([A-Z][A-Z0-9_]*)["']""")
_FRAMEWORK_HEADERS = re.compile(r"""headers\.get\(\s*["']([A-Za-z][A-Za-z0-9-]*)["']""")
# Read under a setting: the header is read only when the setting is on.
READ_UNDER = {"x-forwarded-host": "USE_X_FORWARDED_HOST",
              "x-forwarded-port": "USE_X_FORWARDED_PORT",
              "user-agent": "DISALLOWED_USER_AGENTS"}


def headers_the_code_reads() -> dict[str, str]:
    """header (lower case) -> the first place that reads it."""
    found: dict[str, str] = {}
    for package in SERVER_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or "tests" in path.parts:
                continue
            text = path.read_text()
            for match in _META_KEY.finditer(text):
                name = (match.group(1) or match.group(2)).replace("_", "-").lower()
                found.setdefault(name, str(path.relative_to(ROOT)))
            for match in _REQUEST_HEADERS.finditer(text):
                found.setdefault(match.group(1).lower(), str(path.relative_to(ROOT)))
    # Headers a serializer validates (TriggerHeadersSerializer.from_headers): their labels.
    from rest_framework import serializers

    import intakes.openapi

    for value in vars(intakes.openapi).values():
        if (isinstance(value, type) and issubclass(value, serializers.Serializer)
                and hasattr(value, "from_headers")):
            for field in value._declared_fields.values():
                found.setdefault(field.label.lower(), f"intakes/openapi.py {value.__name__}")
    return found


def _framework_modules() -> list[str]:
    from django.conf import settings

    ours = SERVER_PACKAGES
    middleware = [path.rsplit(".", 1)[0] for path in settings.MIDDLEWARE
                  if path.split(".", 1)[0] not in ours]
    return [*middleware, *FRAMEWORK_MODULES]


def headers_the_framework_reads() -> dict[str, str]:
    """header (lower case) -> the framework module that reads it, for the admin: every
    middleware of settings.MIDDLEWARE that is not ours, and FRAMEWORK_MODULES."""
    import importlib
    import inspect

    from django.conf import settings

    found: dict[str, str] = {}
    for name in _framework_modules():
        text = inspect.getsource(importlib.import_module(name))
        for match in _FRAMEWORK_META_KEY.finditer(text):
            found.setdefault(match.group(1).replace("_", "-").lower(), name)
        for match in _FRAMEWORK_HEADERS.finditer(text):
            found.setdefault(match.group(1).removeprefix("HTTP_").replace("_", "-").lower(),
                             name)
        if "settings.CSRF_HEADER_NAME" in text:
            header = settings.CSRF_HEADER_NAME.removeprefix("HTTP_")
            found.setdefault(header.replace("_", "-").lower(), name)
        if "COOKIES" in text:
            found.setdefault("cookie", name)
    return found


def test_the_framework_scan_finds_what_the_admin_is_known_to_read():
    found = headers_the_framework_reads()
    assert {"origin", "referer", "x-csrftoken", "host", "cookie", "x-forwarded-host",
            "if-modified-since", "range", "accept-encoding"} <= set(found), found
    assert "django.middleware.csrf" in _framework_modules()


def test_every_header_the_framework_reads_for_the_admin_is_classified():
    found = headers_the_framework_reads()
    unclassified = {name: where for name, where in found.items()
                    if name not in SINGLE_VALUED | set(LIST_VALUED) | set(NOT_DECIDING)
                    and name != COOKIE}
    assert unclassified == {}, "classify each in auxot/singleheaders.py"


def test_the_headers_left_joined_decide_nothing_here():
    """NOT_DECIDING's reasons stay true: each is read only under a setting that is off."""
    from django.conf import settings

    assert set(NOT_DECIDING) == set(READ_UNDER)
    assert set(NOT_DECIDING) <= set(headers_the_framework_reads())
    for header, setting in READ_UNDER.items():
        assert not getattr(settings, setting), f"{setting} is on: classify {header} again"


def test_the_scan_finds_the_reads_it_is_meant_to_find():
    found = headers_the_code_reads()
    # One of each way of reading: META, request.headers, a headers serializer, CONTENT_*.
    assert {"authorization", "x-request-id", "auxot-callback-url", "idempotency-key",
            "auxot-correlation-id", "content-type", "x-forwarded-for"} <= set(found)


def test_every_header_the_code_reads_is_classified():
    found = headers_the_code_reads()
    assert not SINGLE_VALUED & set(LIST_VALUED)
    unclassified = {name: where for name, where in found.items()
                    if name not in SINGLE_VALUED | set(LIST_VALUED) | {COOKIE}}
    assert unclassified == {}, "classify each in auxot/singleheaders.py"
    # (NOT_DECIDING's reasons hold only while no line of ours reads them.)
    assert not set(found) & set(NOT_DECIDING)
    # And nothing classified that nothing reads (a stale entry hides a renamed header).
    stale = ((SINGLE_VALUED | set(LIST_VALUED) | set(NOT_DECIDING)) - set(found)
             - set(headers_the_framework_reads()) - set(READ_BY_THE_FRAMEWORK))
    assert stale == set()
    assert not (SINGLE_VALUED | set(LIST_VALUED)) & (set(NOT_DECIDING) | {COOKIE})


def test_repeated_header_is_case_blind_and_ignores_lists():
    assert repeated_header(["Accept", "accept", "X-Forwarded-For", "x-forwarded-for"]) is None
    assert repeated_header(["IDEMPOTENCY-KEY", "Accept", "idempotency-key"]) == "Idempotency-Key"
    assert repeated_header(["Authorization"]) is None
    assert canonical("AUXOT-CALLBACK-URL") == "Auxot-Callback-Url"


# --- through a real gunicorn ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        web = Gunicorn(workers=1).start()
    yield web
    web.stop()


@pytest.fixture
def trigger(server, cast, intake_a, transactional_db):
    token = apikey_issue(org=cast.org_a, label="twice", user=cast.member_a).token
    return server, f"/v1/intake/{intake_a.pk}", token


def _exchange(port: int, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + body)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
    head_bytes, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _trigger_head(path: str, token: str, *extra: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Authorization: Bearer {token}", "Content-Length: 2", "Connection: close",
             *extra]
    return "\r\n".join(lines) + "\r\n\r\n"


# A second value for each single-valued header (the first is the trigger's own where it has
# one). "qqqq" marks what must never be echoed.
SECOND = {
    "authorization": "Bearer qqqq-second-credential",
    "auxot-callback-url": "http://127.0.0.1:9/qqqq",
    "auxot-correlation-id": "qqqq-b",
    "content-length": "2",
    "content-type": "application/json; qqqq=1",
    "host": "qqqq.example",
    "if-modified-since": "Sun, 06 Nov 1994 08:49:37 GMT",
    "origin": "https://qqqq.example",
    "range": "bytes=0-1",
    "referer": "https://qqqq.example/admin/",
    "x-csrftoken": "qqqq-b",
    "idempotency-key": "qqqq-b",
    "x-request-id": "qqqq-b",
}
FIRST = {"auxot-callback-url": "http://127.0.0.1:9/first", "auxot-correlation-id": "first-a",
         "idempotency-key": "first-a", "x-request-id": "first-a",
         "if-modified-since": "Sat, 05 Nov 1994 08:49:37 GMT",
         "origin": "https://first.example", "range": "bytes=2-3",
         "referer": "https://first.example/admin/", "x-csrftoken": "first-a"}


def test_every_single_valued_header_has_a_second_value_to_send():
    assert set(SECOND) == SINGLE_VALUED


def _assert_refused_naming(status, headers, body, name: str) -> None:
    assert status == 400, body[:300]
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["code"] == "invalid_request" and problem["status"] == 400
    assert f"The {canonical(name)} header is sent more than once" in problem["detail"]
    assert b"qqqq" not in body and b"first" not in body


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(SINGLE_VALUED))
def test_a_single_valued_header_sent_twice_is_refused_by_gunicorn(trigger, name):
    server, path, token = trigger
    extra = [f"{canonical(name)}: {FIRST[name]}"] if name in FIRST else []
    head = _trigger_head(path, token, *extra, f"{canonical(name)}: {SECOND[name]}")
    status, headers, body = _exchange(server.port, head, b"{}")
    _assert_refused_naming(status, headers, body, name)
    assert not WorkItem.objects.exists()
    assert "qqqq" not in server.log()


@pytest.mark.e2e
def test_list_headers_sent_twice_stay_joined(trigger):
    server, path, token = trigger
    head = _trigger_head(path, token, "Accept: application/json", "Accept: */*",
                         "X-Forwarded-For: 10.0.0.1", "X-Forwarded-For: 10.0.0.2",
                         "Content-Encoding: identity", "Content-Encoding: identity")
    status, _, body = _exchange(server.port, head, b"{}")
    assert status == 202, body[:300]
    assert WorkItem.objects.count() == 1


@pytest.mark.e2e
def test_one_of_each_is_accepted(trigger):
    server, path, token = trigger
    head = _trigger_head(path, token, *(f"{canonical(n)}: {v}" for n, v in FIRST.items()
                                        if n != "auxot-callback-url"))
    status, _, body = _exchange(server.port, head, b"{}")
    assert status == 202, body[:300]


def _signed_in_session(cast) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(cast.admin_a)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _admin_head(*cookies: str) -> str:
    return ("GET /admin/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + "".join(f"Cookie: {cookie}\r\n" for cookie in cookies) + "\r\n")


@pytest.mark.e2e
def test_cookies_split_into_several_fields_are_one_cookie_header(server, cast,
                                                                 transactional_db):
    """RFC 9113 8.2.3: an HTTP/2 hop may send one field per cookie. Joined with a comma the
    session cookie's value ran into the next cookie's and the admin signed the person out
    (a redirect to the login page); joined with "; " they are signed in."""
    session = _signed_in_session(cast)
    status, _, body = _exchange(server.port, _admin_head(f"sessionid={session}",
                                                         "csrftoken=abcdefghijklmnop"))
    assert status == 200, body[:300]
    assert b"Log out" in body or b"logout" in body
    # And as one field, the same.
    assert _exchange(server.port, _admin_head(
        f"sessionid={session}; csrftoken=abcdefghijklmnop"))[0] == 200


def test_the_wsgiref_handlers_join_cookie_fields_with_semicolons():
    """runserver's and the metrics exporter's handlers (SingleValuedHeadersHandler): wsgiref
    joins repeated fields with a comma; Cookie fields are joined with "; " instead."""
    import http.client
    import io
    from wsgiref.simple_server import WSGIRequestHandler

    from auxot.singleheaders import SingleValuedHeadersHandler

    class Handler(SingleValuedHeadersHandler, WSGIRequestHandler):
        def __init__(self, raw: bytes):  # no socket: only what get_environ reads
            self.headers = http.client.parse_headers(io.BytesIO(raw))
            self.path, self.request_version, self.command = "/admin/", "HTTP/1.1", "GET"
            self.client_address = ("127.0.0.1", 1)
            self.server = type("Server", (), {"base_environ": {}})()

    two = Handler(b"Cookie: sessionid=s1\r\nCookie: csrftoken=c1\r\nAccept: a\r\n"
                  b"Accept: b\r\n\r\n").get_environ()
    assert two["HTTP_COOKIE"] == "sessionid=s1; csrftoken=c1"
    assert two["HTTP_ACCEPT"] == "a,b"  # a list stays joined as before
    assert Handler(b"Cookie: a=1; b=2\r\n\r\n").get_environ()["HTTP_COOKIE"] == "a=1; b=2"


# --- `make run`'s server (runserver) and the metrics exporter (wsgiref) ---------------------

@pytest.mark.e2e
def test_runserver_refuses_a_header_sent_twice():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks",
         f"127.0.0.1:{port}"], cwd=ROOT, env=process_env(DEBUG="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def answers() -> bool:
            assert proc.poll() is None, "runserver exited"
            try:
                return _exchange(port, "GET /v1/problems/not_found HTTP/1.1\r\nHost: "
                                 "127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 200
            except OSError:
                return False

        wait_for(answers, timeout=60, interval=0.2, what="runserver to answer")
        base = "GET /v1/problems/not_found HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        status, headers, body = _exchange(
            port, base + "Idempotency-Key: first-a\r\nIdempotency-Key: qqqq-b\r\n\r\n")
        _assert_refused_naming(status, headers, body, "idempotency-key")
        # A list header twice is still served.
        assert _exchange(port, base + "Accept: */*\r\nAccept: */*\r\n\r\n")[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.e2e
def test_metrics_exporter_refuses_two_authorizations(tmp_path):
    env = process_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
                      AUXOT_METRICS_TOKEN="0123456789abcdef0123")
    exporter = subprocess.Popen(
        [sys.executable, "manage.py", "metrics_exporter", "--port", "0"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(exporter.stdout.readline().rsplit(":", 1)[1])
        status, headers, body = _exchange(
            port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            "Authorization: Bearer 0123456789abcdef0123\r\nAuthorization: Bearer qqqq\r\n\r\n")
        _assert_refused_naming(status, headers, body, "authorization")
    finally:
        exporter.terminate()
        exporter.wait(10)


def test_the_servers_that_serve_http_use_the_check():
    """Every way this project serves HTTP: gunicorn (Procfile, deploy), runserver (`make
    run`'s demo) and the metrics exporter."""
    from django.core.management import get_commands, load_command_class

    from auxot.singleheaders import SingleValuedHeadersHandler

    conf = (ROOT / "gunicorn.conf.py").read_text()
    assert 'worker_class = "auxot.gunicorn_worker.ProblemThreadWorker"' in conf
    from intakes.management.commands.demo import Command as Demo

    assert Demo()._children(8000)["web server"][2] == "runserver"
    runserver = load_command_class(get_commands()["runserver"], "runserver")
    handler = runserver.server_cls.__init__.__globals__["RequestHandler"]
    assert issubclass(handler, SingleValuedHeadersHandler)
    from intakes.management.commands.metrics_exporter import _QuietHandler

    assert issubclass(_QuietHandler, SingleValuedHeadersHandler)
    assert Path(ROOT / "Procfile").read_text().count("gunicorn auxot.wsgi") == 1
