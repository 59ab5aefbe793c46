"""The bad-input wall: every hostile request gets a JSON 4xx, never a 5xx or HTML, and
stores no work item. Transport-level cases go through a real gunicorn on raw sockets."""

import json
import socket
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apikeys.services import apikey_issue
from apikeys.tokens import _checksum
from auxot.models import AuditEvent
from tests.processes import Gunicorn
from tests.workflows.test_unstorable_answers import UNSTORABLE
from workflows.models import WorkItem

LIMIT = 1024 * 1024  # AUXOT_MAX_BODY_BYTES default


def _forge(token: str, *, checksum_ok: bool) -> str:
    body = token[:-6]
    body = body[:-1] + ("A" if body[-1] != "A" else "B")
    return body + (_checksum(body) if checksum_ok else token[-6:])


def _assert_problem(response, status: int) -> None:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert not WorkItem.objects.exists()


# --- in process (Django test client) ----------------------------------------------------

def test_ten_megabyte_string_gets_413(api, intake_a, member_token):
    body = json.dumps({"text": "x" * (10 * 1024 * 1024)})
    response = api.post(f"/v1/intake/{intake_a.pk}", data=body, content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {member_token}")
    _assert_problem(response, 413)


def test_ten_megabyte_string_within_a_raised_limit_is_accepted(api, intake_a, member_token,
                                                               settings):
    settings.AUXOT_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 11 * 1024 * 1024
    body = json.dumps({"text": "x" * (10 * 1024 * 1024)})
    response = api.post(f"/v1/intake/{intake_a.pk}", data=body, content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {member_token}")
    assert response.status_code == 202


@pytest.mark.parametrize("header", [
    "bearer {t}", "BEARER {t}", "Bearer  {t}", "Bearer\t{t}", "Token {t}", "{t}", "Bearer",
    "Bearer {t} extra", "Basic dXNlcjpwdw==", "Bearer " + "a" * 10240,
])
def test_authorization_variants_get_401(api, intake_a, member_token, header):
    response = api.post(f"/v1/intake/{intake_a.pk}", data="{}", content_type="application/json",
                        HTTP_AUTHORIZATION=header.format(t=member_token))
    _assert_problem(response, 401)
    assert response["WWW-Authenticate"] == 'Bearer realm="auxot"'


@pytest.mark.parametrize("checksum_ok", [False, True], ids=["bad-checksum", "bad-secret"])
def test_valid_prefix_with_wrong_checksum_or_secret_gets_401(api, intake_a, member_token,
                                                             checksum_ok):
    forged = _forge(member_token, checksum_ok=checksum_ok)
    with CaptureQueriesContext(connection) as queries:
        response = api.post(f"/v1/intake/{intake_a.pk}", data="{}",
                            content_type="application/json",
                            HTTP_AUTHORIZATION=f"Bearer {forged}")
    _assert_problem(response, 401)
    # a bad checksum is refused without looking the key up; a bad secret costs one lookup
    lookups = [q["sql"] for q in queries.captured_queries if "apikeys_apikey" in q["sql"]]
    assert len(lookups) == (1 if checksum_ok else 0), lookups
    # ... and either way the only write is the one intake.rejected audit row
    writes = [q["sql"] for q in queries.captured_queries
              if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert len(writes) == 1 and "auxot_auditevent" in writes[0], writes
    assert AuditEvent.objects.filter(event="intake.rejected").count() == 1


@pytest.mark.parametrize("intake_id", ["not-a-uuid", "1", "%00", "' OR 1=1 --", "x" * 300])
def test_non_uuid_intake_id_gets_404(api, intake_a, member_token, intake_id):
    response = api.post(f"/v1/intake/{intake_id}", data="{}", content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {member_token}")
    _assert_problem(response, 404)


@pytest.mark.parametrize("query", ["wait=%00", "wait=1%00", "x=%00"])
def test_a_nul_in_the_api_querystring_gets_the_api_answer(api, intake_a, member_token, query):
    # The pages' NUL guard (auxot.http.NulInQueryRefused) leaves /v1/ to its own checks.
    work = api.post(f"/v1/intake/{intake_a.pk}", data="{}", content_type="application/json",
                    HTTP_AUTHORIZATION=f"Bearer {member_token}").json()["work_id"]
    response = api.get(f"/v1/intake/{intake_a.pk}/work/{work}?{query}",
                       HTTP_AUTHORIZATION=f"Bearer {member_token}")
    if query.startswith("wait"):
        assert response.status_code == 400, response.content[:300]
        assert response["Content-Type"] == "application/problem+json"
        assert "wait" in response.json()["detail"]
    else:
        assert response.status_code == 200 and response.json()["work_id"] == work


@pytest.mark.parametrize("work_id", ["not-a-uuid", "0", "x" * 300])
def test_non_uuid_work_id_gets_404(api, intake_a, member_token, work_id):
    response = api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}",
                       HTTP_AUTHORIZATION=f"Bearer {member_token}")
    _assert_problem(response, 404)


def test_chunked_body_without_a_terminating_server_gets_411(api, intake_a, member_token):
    response = api.generic("POST", f"/v1/intake/{intake_a.pk}", data=b"",
                           content_type="application/json", HTTP_TRANSFER_ENCODING="chunked",
                           HTTP_AUTHORIZATION=f"Bearer {member_token}")
    _assert_problem(response, 411)


# --- through a real gunicorn, raw sockets ------------------------------------------------

@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        web = Gunicorn(workers=1).start()
    yield web
    web.stop()


@pytest.fixture
def wall(server, cast, intake_a, transactional_db):
    token = apikey_issue(org=cast.org_a, label="wall", user=cast.member_a).token
    return server, f"/v1/intake/{intake_a.pk}", token


class Raw:
    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_code = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in lines[1:])}

    def problem(self) -> dict:
        assert self.headers["content-type"] == "application/problem+json", self.body[:200]
        return json.loads(self.body)


def raw_request(server, head: str, body_parts=()) -> Raw:
    """Send head and body parts from a thread (the server may answer and close before
    reading everything, as it should for a too-large body); read the full answer."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)

    def send():
        try:
            sock.sendall(head.encode("latin-1"))
            for part in body_parts:
                sock.sendall(part)
        except OSError:
            pass  # the server refused the rest: expected for too-large bodies

    sender = threading.Thread(target=send)
    sender.start()
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    sender.join()
    sock.close()
    return Raw(b"".join(chunks))


def _head(path: str, token: str, *extra: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Authorization: Bearer {token}", "Connection: close", *extra]
    return "\r\n".join(lines) + "\r\n\r\n"


def _chunked(data: bytes, size: int = 65536):
    for start in range(0, len(data), size):
        piece = data[start:start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.mark.e2e
def test_chunked_body_within_limit_is_accepted(wall):
    server, path, token = wall
    body = json.dumps({"n": 1, "pad": "y" * 200_000}).encode()
    response = raw_request(server, _head(path, token, "Transfer-Encoding: chunked"),
                           _chunked(body))
    assert response.status_code == 202, response.body[:300]
    assert WorkItem.objects.get().input["n"] == 1


@pytest.mark.e2e
def test_chunked_body_over_limit_gets_413(wall):
    server, path, token = wall
    body = json.dumps({"pad": "z" * (LIMIT + 10)}).encode()
    response = raw_request(server, _head(path, token, "Transfer-Encoding: chunked"),
                           _chunked(body))
    assert response.status_code == 413 and response.problem()["code"] == "payload_too_large"
    assert not WorkItem.objects.exists()


@pytest.mark.e2e
def test_declared_content_length_over_limit_gets_413_before_the_body(wall):
    server, path, token = wall
    response = raw_request(server, _head(path, token, f"Content-Length: {LIMIT * 10}"),
                           [b"{" + b" " * 65536])
    assert response.status_code == 413 and response.problem()["code"] == "payload_too_large"
    assert not WorkItem.objects.exists()


@pytest.mark.e2e
def test_lying_small_content_length_gets_400_not_a_truncated_item(wall):
    server, path, token = wall
    body = b'{"n": 1, "more": "' + b"q" * 5000 + b'"}'
    response = raw_request(server, _head(path, token, "Content-Length: 10"), [body])
    assert response.status_code == 400 and response.problem()["code"] == "invalid_json"
    assert not WorkItem.objects.exists()


@pytest.mark.e2e
def test_two_authorization_headers_get_400_naming_the_header(wall):
    # Joined with a comma they were one malformed token (401); now refused before the view
    # (tests/auxot/test_single_valued_headers.py has every such header).
    server, path, token = wall
    head = _head(path, token, f"Authorization: Bearer {token}", "Content-Length: 2")
    response = raw_request(server, head, [b"{}"])
    assert response.status_code == 400 and response.problem()["code"] == "invalid_request"
    assert "Authorization header is sent more than once" in response.problem()["detail"]
    assert not WorkItem.objects.exists()


@pytest.mark.e2e
def test_ten_kilobyte_authorization_header_gets_json_401(wall):
    server, path, _token = wall
    response = raw_request(server, _head(path, "user." + "a" * 10240, "Content-Length: 2"),
                           [b"{}"])
    assert response.status_code == 401 and response.problem()["code"] == "unauthorized"


@pytest.mark.e2e
def test_valid_request_through_gunicorn_is_accepted(wall):
    server, path, token = wall
    response = raw_request(server, _head(path, token, "Content-Length: 2"), [b"{}"])
    assert response.status_code == 202
    assert WorkItem.objects.count() == 1


@pytest.mark.parametrize("body", [b'{"a": "x\\u0000y"}', b'{"a\\u0000": 1}',
                                  b'{"a": ["\\ud800"]}', b'{"\\udfff": 1}'])
def test_unstorable_escapes_get_422_not_503(api, intake_a, member_token, body):
    """\\u0000 and lone surrogates are valid JSON but no jsonb/text column stores them."""
    response = api.post(f"/v1/intake/{intake_a.pk}", data=body, content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {member_token}")
    assert response.status_code == 422, response.content
    assert response.json()["code"] == "validation_failed"


@pytest.mark.parametrize("fragment", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_every_unstorable_value_gets_a_4xx(api, intake_a, member_token, fragment):
    """The class the steps keep as text or refuse (one rule, auxot/storable.py): a caller's
    body holding any of it is refused before anything is stored."""
    response = api.post(f"/v1/intake/{intake_a.pk}", data='{"a": ' + fragment + "}",
                        content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {member_token}")
    assert response.status_code in (400, 422), response.content[:300]
    assert response.json()["code"] == ("validation_failed" if response.status_code == 422
                                       else "invalid_json")
    assert not WorkItem.objects.exists()


# What gunicorn's parser refuses before Django sees the request: each answered as a problem
# (auxot/gunicorn_worker.py), with HTTP's status for it, never gunicorn's HTML page. Every
# refusal the worker maps is sent here (test_every_parser_refusal_is_sent checks the list).
PARSER_REFUSALS = {
    "LimitRequestLine": (414, "uri_too_long",
                         "POST /v1/intake/x?" + "q" * 5000 + " HTTP/1.1\r\nHost: h\r\n\r\n"),
    "LimitRequestHeaders": (431, "headers_too_large", "POST /v1/intake/x HTTP/1.1\r\nHost: h\r\n"
                            + "".join(f"X-Pad-{n}: {n}\r\n" for n in range(120)) + "\r\n"),
    "InvalidRequestLine": (400, "invalid_request", "POST /v1/intake/x\r\n\r\n"),
    "InvalidRequestMethod": (400, "invalid_request", "P<ST /v1/intake/x HTTP/1.1\r\n\r\n"),
    "InvalidHTTPVersion": (400, "invalid_request", "POST /v1/intake/x HTTP/7.3\r\n\r\n"),
    "InvalidHeaderName": (400, "invalid_request",
                          "POST /v1/intake/x HTTP/1.1\r\nHost: h\r\nBad(Name): v\r\n\r\n"),
    "InvalidHeader": (400, "invalid_request",
                      "POST /v1/intake/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                      "Content-Length: 2\r\n\r\n"),
    "ObsoleteFolding": (400, "invalid_request",
                        "POST /v1/intake/x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded\r\n\r\n"),
    "InvalidSchemeHeaders": (400, "invalid_request",
                             "GET /healthz HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n"
                             "X-Forwarded-Ssl: off\r\n\r\n"),
    "ExpectationFailed": (417, "expectation_failed",
                          "POST /v1/intake/x HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n"),
    "UnsupportedTransferCoding": (501, "transfer_coding_unsupported",
                                  "POST /v1/intake/x HTTP/1.1\r\nHost: h\r\n"
                                  "Transfer-Encoding: qqqq, chunked\r\n\r\n"),
    # The chunked body is read by the application (gunicorn de-chunks as it reads), so these
    # arrive with a valid trigger's headers: the malformed chunk is what is refused.
    "InvalidChunkSize": (400, "invalid_request", "{trigger}qqqq\r\n{{}}\r\n0\r\n\r\n"),
    "ChunkMissingTerminator": (400, "invalid_request", "{trigger}2\r\n{{}}qqqq\r\n0\r\n\r\n"),
    "InvalidChunkExtension": (400, "invalid_request", "{trigger}2;\x01\r\n{{}}\r\n0\r\n\r\n"),
    "InvalidH2CPreface": (None, "", "h2c is off (http2_cleartext): gunicorn never reads one"),
    "ConfigurationProblem": (None, "", "SCRIPT_NAME is not set: no path can fall outside it"),
}
# Those gunicorn raises only where this deployment cannot reach them (None above): mapped all
# the same, so turning the feature on keeps the answers problems; not sent.
UNREACHABLE = {kind for kind, (status, _, _) in PARSER_REFUSALS.items() if status is None}


def test_every_parser_refusal_the_worker_maps_is_sent():
    from auxot.gunicorn_worker import REFUSED

    assert {kind.__name__ for kind, _, _ in REFUSED} == set(PARSER_REFUSALS)


def test_every_error_of_gunicorns_parser_is_answered_or_left_with_a_reason():
    """The class, from gunicorn itself: a parse error a new gunicorn adds is either answered
    as a problem by the worker or named, with why, as left to gunicorn."""
    import inspect

    from gunicorn.http import errors

    from auxot.gunicorn_worker import LEFT_TO_GUNICORN, REFUSED, refusal

    parse_errors = {name for name, kind in inspect.getmembers(errors, inspect.isclass)
                    if issubclass(kind, errors.ParseException)
                    and kind is not errors.ParseException}
    mapped = {kind.__name__ for kind, _, _ in REFUSED}
    assert not mapped & set(LEFT_TO_GUNICORN)
    assert mapped | set(LEFT_TO_GUNICORN) == parse_errors
    # The application's own bad response header is a 500, though it subclasses InvalidHeader.
    assert refusal(errors.InvalidResponseHeader("X", "v")) is None
    assert refusal(errors.InvalidResponseHeaderName("X(")) is None


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(set(PARSER_REFUSALS) - UNREACHABLE))
def test_what_gunicorns_parser_refuses_is_a_problem_not_an_html_page(server, kind, request):
    status, code, head = PARSER_REFUSALS[kind]
    if "{trigger}" in head:
        _, path, token = request.getfixturevalue("wall")
        head = head.format(trigger=f"POST {path} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "
                           f"{token}\r\nContent-Type: application/json\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n")
    response = raw_request(server, head)
    assert response.status_code == status, response.body[:300]
    problem = response.problem()
    assert (problem["status"], problem["code"], problem["type"]) == (
        status, code, f"/v1/problems/{code}")
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body)
    # What the client sent is not echoed back (gunicorn's page quoted the request line).
    assert b"qqqq" not in response.body and b"Bad(Name)" not in response.body
    assert "Invalid request from ip=127.0.0.1: " + kind in server.log()
