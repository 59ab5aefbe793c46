"""A log line cannot be forged: whatever a caller or a tenant puts in a path, a header, a name
or an exception's message, one record is one line of text (its traceback indented under it)
or one JSON object, with no control character a terminal would run (auxot/logs.py)."""

import json
import logging
import re
import sys

import pytest
from django.conf import settings
from django.test import override_settings

from auxot.logs import CONTINUATION, ContextFilter, JsonFormatter, TextFormatter, log_context
from tests.conftest import bearer, trigger

# Each breaks a line, forges one, or makes a terminal act (clear the screen, reorder text).
HOSTILE = ["\n", "\r", "\r\n", "\x1b[2J\x1b[31m", "\x00", "\x08", "\x7f", "\x85", "\x9b2J",
           "\u2028", "\u2029", "\u202e", "\x0b", "\x0c", "\x1c", "\t"]
FORGED = "2030-01-01 00:00:00,000 INFO auxot.request GET /admin/ 200 1.0ms [request_id=forged]"


def _formatters() -> dict[str, logging.Formatter]:
    """The two formatters exactly as the settings configure them."""
    plain = settings.LOGGING["formatters"]["plain"]
    assert plain["class"] == "auxot.logs.TextFormatter"
    return {"text": TextFormatter(plain["format"]), "json": JsonFormatter()}


def _assert_one_record(kind: str, text: str) -> None:
    lines = text.split("\n")
    assert all(line.isprintable() for line in lines), text  # no control, no separator
    if kind == "json":
        assert len(lines) == 1
        json.loads(text)
    else:
        assert re.match(r"\d{4}-\d\d-\d\d ", lines[0]), text
        assert all(line.startswith(CONTINUATION) for line in lines[1:]), text


def _formatted_everywhere(value: str):
    """(format, text) of records holding `value` in every place a value reaches one: the
    message and its arguments, each context id, extras, the logger's name, an exception's
    message (and its cause), a stack; in both formats, with and without the traceback."""
    try:
        try:
            raise KeyError(value)
        except KeyError as inner:
            raise ValueError(value) from inner
    except ValueError:
        exc_info = sys.exc_info()
    context = dict.fromkeys(("request_id", "intake_id", "work_id", "key_lookup_id"), value)
    for kind, formatter in _formatters().items():
        for extra_exc, stack in ((None, None), (exc_info, None), (None, f"Stack:{value}\n")):
            with log_context(**context):
                record = logging.getLogger(value).makeRecord(
                    value, logging.ERROR, __file__, 1, value + " %s %r", (value, value),
                    extra_exc, extra={"event": value, "path": value, "client_ip": value},
                    sinfo=stack)
                ContextFilter().filter(record)
            yield kind, formatter.format(record)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_field_of_a_record_stays_on_its_line_in_both_formats(hostile):
    """Every place a value reaches a record: the message and its arguments, each context
    id, an extra, the logger's name, an exception's message (and chained one), a stack."""
    value = f"a{hostile}{FORGED}{hostile}b"
    for kind, text in _formatted_everywhere(value):
        _assert_one_record(kind, text)
        assert FORGED in text  # kept, readable, only never at a line's start


def test_text_escapes_are_readable_and_printable_text_is_untouched():
    from auxot.logs import log_text

    assert log_text("GET /a\n\x1b[2J\u2028 Zoë 東京 ✓") == "GET /a\\n\\x1b[2J\\u2028 Zoë 東京 ✓"
    assert log_text("plain text, spaces and all") == "plain text, spaces and all"


class _Collect(logging.Handler):
    """Every record any logger emits during a request, with the context filter applied."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected():
    handler, root = _Collect(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# What a caller controls on the way in: the path and every header the server reads or
# might log. Each hostile value goes into each of them.
CALLER_HEADERS = ["HTTP_X_REQUEST_ID", "HTTP_AUXOT_CORRELATION_ID", "HTTP_USER_AGENT",
                  "HTTP_IDEMPOTENCY_KEY", "HTTP_AUXOT_CALLBACK_URL", "HTTP_X_FORWARDED_FOR",
                  "HTTP_REFERER"]


@override_settings(AUXOT_REQUEST_LOG=True, AUXOT_TRUSTED_PROXIES=["127.0.0.1"])
@pytest.mark.django_db
@pytest.mark.parametrize("hostile", ["\n", "\r", "\x1b[2J", "\u2028", "\x85"])
def test_no_caller_value_forges_a_line_on_any_request(api, intake_a, member_token, collected,
                                                      hostile):
    value = f"x{hostile}{FORGED}"
    quoted = value.encode().hex()  # the path, percent-encoded byte by byte
    path = "/v1/intake/" + "".join(f"%{quoted[i:i + 2]}" for i in range(0, len(quoted), 2))
    api.post(path, data={}, format="json", **bearer(member_token))
    api.get("/healthz/" + path[len("/v1/intake/"):])
    for header in CALLER_HEADERS:
        trigger(api, intake_a.pk, member_token, **{header: value})
    lines = [r for r in collected if getattr(r, "event", "") == "http.request"]
    assert len(lines) == 2 + len(CALLER_HEADERS)
    assert any(hostile in r.path for r in lines)  # the path did reach the request line
    for record in collected:
        for kind, formatter in _formatters().items():
            _assert_one_record(kind, formatter.format(record))


# --- no credential in a log line ------------------------------------------------------------
def _credentials() -> dict[str, str]:
    from tests.auxot.test_credential_formats import SAMPLES

    return {kind: values[0] for kind, values in SAMPLES.items()}


@pytest.mark.parametrize("kind", sorted(_credentials()))
def test_no_field_of_a_record_writes_a_credential_in_either_format(kind):
    """A credential in any place a value reaches a record (the message and its arguments,
    the context ids, an extra, the logger's name, an exception's message and its cause, a
    stack) is written REDACTED, in the text and the JSON format: an error quoting a header
    or a URL, or a caller's request id, never puts a secret in a log."""
    secret = _credentials()[kind]
    value = f"before {secret} after"
    tail = secret.strip().splitlines()[-1][-16:] if "PRIVATE KEY" not in secret else (
        secret.strip().splitlines()[1][:16])
    for name, text in _formatted_everywhere(value):
        assert tail not in text, (name, text)
        assert "REDACTED" in text and "before" in text and "after" in text
        _assert_one_record(name, text)


@pytest.mark.django_db
@override_settings(AUXOT_REQUEST_LOG=True)
def test_a_credential_in_a_requests_path_is_not_logged(api, collected):
    """A caller that puts a token in the path (a mistyped URL, a token pasted as an id):
    the request log line has the token REDACTED and keeps the path around it (an operator
    still sees which endpoint was called)."""
    secret = _credentials()["GitHub token"]
    api.post(f"/v1/intake/{secret}", data="{}", content_type="application/json")
    lines = [formatter.format(record) for record in collected
             for formatter in _formatters().values()]
    assert any("POST /v1/intake/REDACTED 401" in line for line in lines), lines
    assert not any(secret in line for line in lines)
