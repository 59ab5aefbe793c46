"""POST /v1/intake/{id}: 202 with a work_id, and a clear 4xx (with no work item) otherwise."""

import gzip
import logging
import zlib
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django_q.models import OrmQ

from auxot.errors import PROBLEMS
from auxot.models import AuditEvent, AuditLogEntry
from tests.conftest import bearer, trigger
from workflows.models import WorkItem


def test_trigger_answers_202_with_work_id_and_location(api, intake_a, member_token, cast):
    response = trigger(api, intake_a.pk, member_token, {"ticket_id": "SUP-1042"},
                       HTTP_AUXOT_CORRELATION_ID="deploy-77", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    item = WorkItem.objects.get(pk=body["work_id"])
    assert response["Location"] == body["status_url"]
    assert body["status_url"].endswith(f"/v1/intake/{intake_a.pk}/work/{item.pk}")
    assert item.input == {"ticket_id": "SUP-1042"}
    assert item.correlation_id == "deploy-77"
    assert item.created_by_key.user == cast.member_a
    assert item.created_by_ip == "10.1.2.3"


def test_triggers_wake_workers_without_a_message_per_item(api, intake_a, member_token):
    for _ in range(3):
        trigger(api, intake_a.pk, member_token)
    # PostgreSQL: a NOTIFY at commit, no broker row; otherwise one waiting drain, in the commit.
    assert OrmQ.objects.count() == (0 if connection.vendor == "postgresql" else 1)


@pytest.mark.parametrize("body", [[1, 2], "text", 42, None, {"deep": {"er": [1, {"x": True}]}}])
def test_any_json_value_is_accepted(api, intake_a, member_token, body):
    response = api.post(f"/v1/intake/{intake_a.pk}", data=__import__("json").dumps(body),
                        content_type="application/json", **bearer(member_token))
    assert response.status_code == 202
    assert WorkItem.objects.get().input == body


def test_public_base_url_builds_links(api, intake_a, member_token, settings):
    settings.AUXOT_PUBLIC_BASE_URL = "https://auxot.example.com"
    response = trigger(api, intake_a.pk, member_token)
    assert response["Location"].startswith("https://auxot.example.com/v1/intake/")


def _post_raw(api, intake, token, raw: bytes, content_type="application/json", **extra):
    return api.generic("POST", f"/v1/intake/{intake.pk}", raw, content_type=content_type,
                       **bearer(token), **extra)


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), [
    (b"{not json", "application/json", 400, "invalid_json"),
    (b"", "application/json", 400, "empty_body"),
    (b'{"a": NaN}', "application/json", 400, "invalid_json"),
    (b'{"a": Infinity}', "application/json", 400, "invalid_json"),
    (b'{"a": 1e999}', "application/json", 400, "invalid_json"),
    (b'{"a": 1, "a": 2}', "application/json", 400, "invalid_json"),
    (b"\xef\xbb\xbf{}", "application/json", 400, "invalid_json"),
    (b'{"a": "\xff"}', "application/json", 400, "invalid_json"),
    (b"[" * 10000 + b"]" * 10000, "application/json", 400, "invalid_json"),
    (b'{"n": ' + b"9" * 5000 + b"}", "application/json", 400, "invalid_json"),
    (b"{}", "text/plain", 415, "unsupported_media_type"),
    (b"{}", "", 415, "unsupported_media_type"),
    (b"{}", "application/json; charset=latin-1", 415, "unsupported_media_type"),
    (b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
])
def test_bad_body_gets_problem_and_no_work_item(api, intake_a, member_token, raw, content_type,
                                                status, code):
    response = _post_raw(api, intake_a, member_token, raw, content_type)
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert not WorkItem.objects.exists()


def test_escaped_backslash_u0000_and_paired_surrogates_are_fine(api, intake_a, member_token):
    raw = b'{"path": "C:\\\\u0000", "emoji": "\\ud83d\\ude00"}'
    response = _post_raw(api, intake_a, member_token, raw)
    assert response.status_code == 202
    assert WorkItem.objects.get().input == {"path": "C:\\u0000", "emoji": "\U0001f600"}


def test_data_error_is_a_400_not_an_outage(api, intake_a, member_token):
    from django.db import DataError

    with mock.patch("intakes.api.intake_trigger", side_effect=DataError("bad value")):
        response = trigger(api, intake_a.pk, member_token)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_a_data_errors_log_line_names_its_class_never_the_refused_value(api, intake_a,
                                                                         member_token, caplog):
    """PostgreSQL's message quotes the value it refused, and its CONTEXT the JSON around it
    (psycopg's text, as the driver raised it): the caller's body, a token in it, reached
    the log, over several lines."""
    import psycopg
    from django.db import DataError

    cause = psycopg.errors.UntranslatableCharacter(
        'unsupported Unicode escape sequence\nDETAIL:  \\u0000 cannot be converted to text.'
        '\nCONTEXT:  JSON data, line 1: {"token": "BODYSECRET\\u0000...')
    refused = DataError(str(cause))
    refused.__cause__ = cause
    with mock.patch("intakes.api.intake_trigger", side_effect=refused), \
            caplog.at_level(logging.WARNING, logger="auxot.errors"):
        assert trigger(api, intake_a.pk, member_token).status_code == 400
    [record] = [r for r in caplog.records if r.name == "auxot.errors"]
    assert record.getMessage() == ("database refused a value: UntranslatableCharacter "
                                   "(SQLSTATE 22P05)")


def test_charset_utf8_and_plus_json_are_accepted(api, intake_a, member_token):
    assert _post_raw(api, intake_a, member_token, b"{}",
                     "application/json; charset=UTF-8").status_code == 202
    assert _post_raw(api, intake_a, member_token, b"{}",
                     "application/vnd.acme+json").status_code == 202


@pytest.mark.parametrize(("raw", "encoding"), [
    (gzip.compress(b'{"n": 1}'), "gzip"),
    (gzip.compress(b'{"n": 1}'), "x-gzip"),
    (zlib.compress(b'{"n": 1}'), "deflate"),
    (b'{"n": 1}', "gzip"),  # a plain body labelled compressed: accepted as if plain before
    (b'{"n": 1}', "br"),
    (b'{"n": 1}', "identity, gzip"),
    (b'{"n": 1}', "zstd"),
])
def test_a_compressed_body_gets_415_and_no_work_item(api, intake_a, member_token, raw,
                                                     encoding):
    response = _post_raw(api, intake_a, member_token, raw, HTTP_CONTENT_ENCODING=encoding)
    assert (response.status_code, response.json()["code"]) == (415, "unsupported_media_type")
    assert response["Accept-Encoding"] == "identity"  # RFC 7694: what we do take
    assert "uncompressed" in response.json()["detail"]
    assert not WorkItem.objects.exists()


def test_a_compressed_cancel_body_gets_415_too(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = api.generic("POST", f"/v1/intake/{intake_a.pk}/work/{work_id}/cancel",
                           gzip.compress(b"{}"), content_type="application/json",
                           HTTP_CONTENT_ENCODING="gzip", **bearer(member_token))
    assert (response.status_code, response.json()["code"]) == (415, "unsupported_media_type")
    assert WorkItem.objects.get().status == "pending"


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY", ""])
def test_identity_content_encoding_is_plain(api, intake_a, member_token, encoding):
    response = _post_raw(api, intake_a, member_token, b'{"n": 1}', HTTP_CONTENT_ENCODING=encoding)
    assert response.status_code == 202


def test_body_over_limit_gets_413(api, intake_a, member_token, settings):
    settings.AUXOT_MAX_BODY_BYTES = 2048
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    raw = b'{"x": "' + b"a" * 4096 + b'"}'
    response = _post_raw(api, intake_a, member_token, raw)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not WorkItem.objects.exists()


def test_lying_small_content_length_still_gets_413(api, intake_a, member_token, settings):
    settings.AUXOT_MAX_BODY_BYTES = 2048
    raw = b'{"x": "' + b"a" * 4096 + b'"}'
    response = _post_raw(api, intake_a, member_token, raw, CONTENT_LENGTH="10")
    # Django reads only the declared 10 bytes: the truncated body is not valid JSON.
    assert response.status_code in (400, 413)
    assert not WorkItem.objects.exists()


def test_overlong_correlation_id_gets_400(api, intake_a, member_token):
    response = trigger(api, intake_a.pk, member_token, HTTP_AUXOT_CORRELATION_ID="x" * 201)
    assert response.status_code == 400
    assert not WorkItem.objects.exists()


def test_database_down_gets_503_not_202(api, intake_a, member_token):
    with mock.patch("intakes.api.intake_trigger", side_effect=OperationalError("down")):
        response = trigger(api, intake_a.pk, member_token)
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"]
    assert not WorkItem.objects.exists()


def test_get_on_trigger_url_is_405_problem(api, intake_a, member_token):
    response = api.get(f"/v1/intake/{intake_a.pk}", **bearer(member_token))
    assert response.status_code == 405
    assert response["Content-Type"] == "application/problem+json"


def test_unknown_v1_path_is_problem_json(api):
    response = api.get("/v1/nothing/here")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/v1/nothing/here", "/v1/", "/v1"])
def test_an_unknown_v1_path_answers_byte_for_byte_as_an_unknown_intake(api, member_token,
                                                                       path, settings):
    unknown_intake = trigger(api, "00000000-0000-0000-0000-000000000000", member_token)
    response = api.get(path)
    assert response.status_code == unknown_intake.status_code == 404
    assert response.content == unknown_intake.content
    assert response["Content-Type"] == unknown_intake["Content-Type"]
    settings.DEBUG = True  # routed, not left to handler404: DEBUG answers the same
    assert api.get(path).content == unknown_intake.content


def test_problem_type_is_dereferenceable(api, intake_a, member_token):
    problem = _post_raw(api, intake_a, member_token, b"{").json()
    doc = api.get(problem["type"])
    assert doc.status_code == 200
    assert doc.json()["code"] == "invalid_json"


def _statements(queries) -> list[str]:
    """The statements a trigger sent, without the savepoints of the test's transaction."""
    return [q["sql"].split(None, 1)[0].upper() for q in queries
            if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


def _captured(request_fn) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert request_fn().status_code == 202
    return _statements(captured.captured_queries)


def _accept_statements() -> list[str]:
    """One read (key, org, user, team, intake, workflow, access), the rate counters (their
    own statement, committed before the item), one write (item + idempotency record +
    NOTIFY on PostgreSQL; on SQLite one INSERT per row and the drain check)."""
    if connection.vendor == "postgresql":
        return ["SELECT", "INSERT", "WITH"]
    return ["SELECT", "INSERT", "INSERT", "SELECT"]


def test_trigger_is_one_read_and_one_write_plus_the_rate_counters(api, intake_a, member_token):
    trigger(api, intake_a.pk, member_token)  # first use touches last_used_at
    assert _captured(lambda: trigger(api, intake_a.pk, member_token)) == _accept_statements()


def test_team_intake_trigger_is_one_read_and_one_write(api, cast, workflow_a):
    from apikeys.services import apikey_issue
    from intakes.services import intake_create

    cast.member_a.memberships.get().teams.add(cast.team_a)
    intake = intake_create(org=cast.org_a, workflow=workflow_a, name="team", team=cast.team_a)
    token = apikey_issue(org=cast.org_a, label="m", user=cast.member_a).token
    trigger(api, intake.pk, token)
    assert _captured(lambda: trigger(api, intake.pk, token)) == _accept_statements()


def test_trigger_with_idempotency_key_writes_its_record_in_the_same_statement(
        api, intake_a, member_token):
    trigger(api, intake_a.pk, member_token)
    statements = _captured(lambda: trigger(api, intake_a.pk, member_token,
                                           HTTP_IDEMPOTENCY_KEY="k-1"))
    if connection.vendor == "postgresql":  # the wait on an in-flight twin is bounded first
        assert statements == ["SELECT", "INSERT", "SET", "WITH"]
    else:
        assert statements == ["SELECT", "INSERT", "INSERT", "INSERT", "SELECT"]


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_write_is_its_own_commit(api, cast, intake_a, member_token):
    """As in production (no test transaction around the request): on PostgreSQL the trigger
    sends exactly three statements, no BEGIN, no savepoint, and the item is committed."""
    trigger(api, intake_a.pk, member_token)
    with CaptureQueriesContext(connection) as captured:
        response = trigger(api, intake_a.pk, member_token)
    assert response.status_code == 202
    sent = [q["sql"].split(None, 1)[0].upper() for q in captured.captured_queries]
    if connection.vendor == "postgresql":
        assert sent == ["SELECT", "INSERT", "WITH"]
    else:
        assert sent[:2] == ["SELECT", "INSERT"] and "SAVEPOINT" not in sent
    assert WorkItem.objects.filter(pk=response.json()["work_id"]).exists()


def _wakes(api, intake, token, n: int) -> list[bool]:
    sent = []
    for _ in range(n):
        with CaptureQueriesContext(connection) as captured:
            assert trigger(api, intake.pk, token).status_code == 202
        sent.append(any("pg_notify" in q["sql"] for q in captured.captured_queries))
    return sent


def test_a_burst_of_triggers_sends_one_wake_up_per_window(api, intake_a, member_token,
                                                          settings):
    """PostgreSQL serializes the commits of transactions that NOTIFY: a web process wakes
    the workers once per AUXOT_WAKE_COALESCE_SECONDS, not once per trigger."""
    if connection.vendor != "postgresql":
        pytest.skip("NOTIFY: PostgreSQL only (elsewhere a waiting drain message is the wake)")
    from intakes import accept

    accept._wake_undo()
    settings.AUXOT_WAKE_COALESCE_SECONDS = 3600
    assert _wakes(api, intake_a, member_token, 3) == [True, False, False]
    settings.AUXOT_WAKE_COALESCE_SECONDS = 0
    assert _wakes(api, intake_a, member_token, 2) == [True, True]


def test_a_failed_write_leaves_the_next_trigger_to_wake_the_workers(api, intake_a,
                                                                    member_token, settings):
    if connection.vendor != "postgresql":
        pytest.skip("NOTIFY: PostgreSQL only")
    from intakes import accept

    accept._wake_undo()
    settings.AUXOT_WAKE_COALESCE_SECONDS = 3600
    with mock.patch("intakes.accept._execute", side_effect=OperationalError("gone")):
        assert trigger(api, intake_a.pk, member_token).status_code == 503
    assert _wakes(api, intake_a, member_token, 2) == [True, False]


def test_with_the_redis_broker_a_trigger_pushes_its_drain_after_commit_and_sends_no_notify(
        api, intake_a, member_token, settings, django_capture_on_commit_callbacks):
    """The Redis broker is woken by a push from the committing process, so the trigger's
    statement carries no NOTIFY (which would also serialize concurrent commits for nothing)."""
    settings.REDIS_URL = "redis://127.0.0.1:6379/15"
    with mock.patch("workflows.wake.drain_request") as drain, \
            CaptureQueriesContext(connection) as captured, \
            django_capture_on_commit_callbacks(execute=True):
        assert trigger(api, intake_a.pk, member_token).status_code == 202
    assert not any("pg_notify" in q["sql"] for q in captured.captured_queries)
    drain.assert_called_once_with()


@pytest.mark.parametrize("code", sorted(PROBLEMS))
def test_every_problem_is_written_as_drf_writes_it(code):
    """The 404/500 handlers and the WSGI middlewares write problem bodies themselves; each
    must be byte for byte what the API's renderer gives (a caller may compare bodies)."""
    from rest_framework.renderers import JSONRenderer

    from auxot.errors import problem_body, problem_json

    detail = "Détail — ünïcode, \"quotes\" and a \\ backslash"
    assert problem_json(code, detail) == JSONRenderer().render(problem_body(code, detail))


def test_curls_form_default_is_named_in_the_415(api, intake_a, member_token):
    """`curl -d` without a Content-Type sends a form: the answer says why it got one."""
    form = _post_raw(api, intake_a, member_token, b"a=1", "application/x-www-form-urlencoded")
    assert "curl -d sends that unless you add -H 'Content-Type: application/json'" in (
        form.json()["detail"])
    plain = _post_raw(api, intake_a, member_token, b"{}", "text/plain")
    assert "curl" not in plain.json()["detail"]


# Behind the README's nginx (same host, X-Forwarded-For appended): the address recorded is
# the caller's, not the proxy's, and a caller's own X-Forwarded-For does not choose it.
BEHIND_PROXY = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "10.9.9.9, 198.51.100.7"}


def test_a_trigger_through_a_trusted_proxy_records_the_callers_address(api, intake_a,
                                                                      member_token):
    response = trigger(api, intake_a.pk, member_token, **BEHIND_PROXY)
    item = WorkItem.objects.get(pk=response.json()["work_id"])
    assert item.created_by_ip == "198.51.100.7"
    accepted = AuditLogEntry.objects.get(event="work_item.accepted", id=item.pk)
    assert accepted.ip == "198.51.100.7"


def test_a_rejection_through_a_trusted_proxy_records_the_callers_address(api, intake_a):
    response = api.post(f"/v1/intake/{intake_a.pk}", data={}, format="json",
                        HTTP_AUTHORIZATION="Bearer nope", **BEHIND_PROXY)
    assert response.status_code == 401
    assert AuditEvent.objects.get(event="intake.rejected").ip == "198.51.100.7"


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(api, intake_a, member_token):
    response = trigger(api, intake_a.pk, member_token, REMOTE_ADDR="203.0.113.50",
                       HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert WorkItem.objects.get(pk=response.json()["work_id"]).created_by_ip == "203.0.113.50"
