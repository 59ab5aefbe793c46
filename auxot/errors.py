"""One error shape everywhere: RFC 9457 application/problem+json.

Services raise `ApplicationError` (or a subclass); `exception_handler` renders it, DRF's
own exceptions and database outages in the same shape.
"""

import json
import logging

from django.db import DataError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
# One body for every "not there / not yours / switched off": callers cannot fingerprint.
# The same for every cause (an unknown or deactivated intake, another organization's, a team
# intake this key may not use, an unknown work id), so a caller cannot tell which; it says
# what to check.
NOT_FOUND_DETAIL = ("No such intake or work item for this key: check the intake id (and the "
                    "work id), that the intake and its workflow are active, and that this key "
                    "may use it (a team key: only its team's intakes).")

# code -> (status, title). The same table feeds /v1/problems/<code>.
PROBLEMS: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "Body is not valid JSON"),
    "empty_body": (400, "Empty request body"),
    "invalid_request": (400, "Invalid request"),
    "unauthorized": (401, "Missing or invalid API key"),
    "forbidden": (403, "Not allowed"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "request_timeout": (408, "Request body not received in time"),
    "conflict": (409, "Conflict"),
    "not_replayable": (409, "Work item cannot be replayed"),
    "idempotency_in_flight": (409, "A request with this Idempotency-Key is still in flight"),
    "length_required": (411, "Length required"),
    "payload_too_large": (413, "Request body too large"),
    "uri_too_long": (414, "Request line too long"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "validation_failed": (422, "Request failed validation"),
    "idempotency_key_reused": (422, "Idempotency-Key reused with a different body"),
    "rate_limited": (429, "Too many requests"),
    "headers_too_large": (431, "Request header fields too large"),
    "expectation_failed": (417, "Expectation failed"),
    "transfer_coding_unsupported": (501, "Transfer coding not implemented"),
    "internal_error": (500, "Internal server error"),
    "database_unavailable": (503, "Service temporarily unavailable"),
    "metrics_unauthorized": (401, "Missing metrics token"),
}
# Answered by the operators' endpoints (/metrics), never by the API: its schema leaves them out.
OPS_PROBLEMS = frozenset({"metrics_unauthorized"})

# code -> when it happens and what to do: the page /v1/problems/<code> (the `type` a caller
# follows from a problem it got). Every code has one; tests/auxot/test_problem_pages.py checks.
PROBLEM_HELP: dict[str, str] = {
    "invalid_json": (
        "The body is not JSON we accept: not valid JSON, not UTF-8, a UTF-8 byte order mark, "
        "NaN or Infinity, a key twice in one object, a number over 1,000 digits or out of "
        "float range, or nesting deeper than 64. `detail` names what and where. Nothing was "
        "accepted: fix the body and send it again."),
    "empty_body": (
        "The request had no body. Send `{}` when the workflow needs no input. Nothing was "
        "accepted."),
    "invalid_request": (
        "A header or a body the operation defines is malformed: an `Auxot-Correlation-Id` or "
        "`Idempotency-Key` that is empty, too long or not printable ASCII, an approval or "
        "cancel body that does not match its schema (`errors` lists each "
        "`{pointer, message}`), a header read as one value sent twice (`Authorization`, "
        "`Idempotency-Key`, `Content-Type`, ...: `detail` names it; send it once), or a "
        "request the server refused as malformed (its Host, a request line or header that "
        "is not HTTP). "
        "Nothing was accepted."),
    "unauthorized": (
        "No usable API key: send `Authorization: Bearer <key>` (the word Bearer, one space, "
        "the key). A key that is malformed, mistyped, unknown, revoked or expired, whose owner "
        "was deactivated, or a team key whose organization left the Business or Enterprise "
        "plan, is refused the same way. Ask an admin for a key (Settings → API keys)."),
    "forbidden": (
        "The key is valid but may not do this: an auditor's key may only poll, a team key may "
        "not approve. On /metrics: this address may not read the metrics, or the metrics "
        "token is wrong."),
    "not_found": (
        "No such intake or work item for this key. An unknown intake, a deactivated one (or "
        "one whose workflow is deactivated), another organization's, a team intake this key "
        "may not use, and an unknown work id all answer this same body, so nothing can be "
        "told apart: check the ids, that the intake and its workflow are active, and that "
        "the key may use it."),
    "method_not_allowed": (
        "The path exists but not with this method; `Allow` lists the ones it has (a trigger "
        "is a POST, a poll a GET)."),
    "request_timeout": (
        "The request body did not arrive in time (`AUXOT_BODY_READ_TIMEOUT_SECONDS`); the "
        "connection is closed and nothing was accepted. Send the body at once (or through a "
        "buffering proxy) and retry."),
    "conflict": (
        "The work item's state does not allow this now: an approval for an item not waiting "
        "for one (or decided or canceled meanwhile), a cancel of a finished item or of one "
        "whose approval is being applied. Poll the item to see its state."),
    "not_replayable": (
        "Only a failed work item can be replayed, once: this one is not failed, was "
        "canceled, was replayed already (its `replayed_by` names the replay), or its "
        "payload was removed by retention."),
    "idempotency_in_flight": (
        "A request with this `Idempotency-Key` is still being processed. Retry after "
        "`Retry-After` seconds: you will get that request's answer."),
    "length_required": (
        "A chunked body this server cannot read. Send `Content-Length` (curl does with "
        "`-d`/`--data-binary`), or put gunicorn in front."),
    "payload_too_large": (
        "The body is larger than this server accepts (`AUXOT_MAX_BODY_BYTES`, 1 MiB by "
        "default). Nothing was accepted: send a reference (a URL, an id) instead of the data."),
    "uri_too_long": (
        "The request line (method, path and query string) is longer than the server reads "
        "(gunicorn's `limit_request_line`, 4,094 bytes by default); nothing was read or "
        "accepted. API paths are short: a long query string is the usual cause."),
    "headers_too_large": (
        "The request has more header fields than the server reads (100), or one larger than "
        "16 KiB; nothing was read or accepted. Send fewer or shorter headers."),
    "expectation_failed": (
        "The request's `Expect` header asks for something other than `100-continue`, the "
        "only expectation HTTP defines; nothing was read or accepted. Drop the header."),
    "transfer_coding_unsupported": (
        "The request's `Transfer-Encoding` names a coding the server does not implement "
        "(only `chunked` is, last); nothing was read or accepted. Send `Content-Length` "
        "and the body as it is."),
    "unsupported_media_type": (
        "The body is not declared as JSON: send `Content-Type: application/json` (UTF-8). "
        "curl's `-d` sends a form unless you add that header. A compressed body "
        "(`Content-Encoding: gzip`, ...) is refused too: send it uncompressed."),
    "validation_failed": (
        "The body violates the workflow's input schema, or a value cannot be stored or used "
        "(an `Auxot-Callback-Url` the URL policy refuses, a string with \\u0000), or text the "
        "API keeps for people to read (an approval's `comment`, a `reason`, an "
        "`Idempotency-Key` or `Auxot-Correlation-Id`) holds a credential: `detail` names the "
        "field and its kind, never the value; remove it. `errors` lists "
        "every `{pointer, message}`. Nothing was accepted."),
    "idempotency_key_reused": (
        "This `Idempotency-Key` was first used with a different body. Use a new key for a "
        "new request; resend the first body to get the first answer."),
    "rate_limited": (
        "The key's, the intake's or the organization's request limit is used up. Retry "
        "after `Retry-After` seconds; on a trigger, `RateLimit-*` say the most restrictive "
        "limit and when it resets. On a poll: polls per second per key and per organization "
        "to one server; long-poll with `?wait=N` instead of polling in a loop."),
    "internal_error": (
        "Something failed on the server; the request itself may be fine. Retry with the same "
        "`Idempotency-Key` (a request that was accepted gets its first answer again), and "
        "give the operators the response's `X-Request-Id`."),
    "database_unavailable": (
        "The database could not be reached; nothing was accepted. Retry after `Retry-After` "
        "seconds."),
    "metrics_unauthorized": (
        "/metrics needs the operators' metrics token: send `Authorization: Bearer <token>` "
        "with the value of `AUXOT_METRICS_TOKEN` (not an API key)."),
}


class ApplicationError(Exception):
    code = "invalid_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        extra: dict | None = None,
        headers: dict | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.extra = extra or {}
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return PROBLEMS[self.code][0]


class NotFoundError(ApplicationError):
    code = "not_found"


class ObjectGoneError(ApplicationError):
    """The object an action was about to change was deleted by someone else meanwhile (read
    a moment before, gone when its row was taken): nothing was changed or audited. The
    admin shows `detail` as its message; the API, a 409."""

    code = "conflict"

    def __init__(self, obj) -> None:
        meta = obj._meta
        name = getattr(obj, "label", None) or getattr(obj, "name", None)
        shown = f"The {meta.verbose_name} “{name}”" if name else f"This {meta.verbose_name}"
        super().__init__(f"{shown} was deleted by someone else: nothing was done to it.")


def row_gone(obj) -> bool:
    """Whether `obj`'s row is gone: after a guarded UPDATE that changed nothing, deleted
    (ObjectGoneError) or just in another state already?"""
    return not type(obj)._default_manager.filter(pk=obj.pk).exists()


def row_refresh(obj) -> None:
    """`obj` as its row now is, read in the caller's transaction (after its guarded
    UPDATE, which holds the row): never read back after the commit, when another admin
    may already have deleted it. ObjectGoneError when it is gone."""
    try:
        obj.refresh_from_db()
    except type(obj).DoesNotExist:
        raise ObjectGoneError(obj) from None


class UnauthorizedError(ApplicationError):
    code = "unauthorized"


class PermissionDeniedError(ApplicationError):
    code = "forbidden"


def problem_body(code: str, detail: str, extra: dict | None = None) -> dict:
    status, title = PROBLEMS[code]
    body = {"type": f"/v1/problems/{code}", "title": title, "status": status, "detail": detail,
            "code": code}
    if extra:
        body.update(extra)
    return body


# How every problem body is written, whoever writes it: byte for byte what DRF's JSONRenderer
# writes for problem_response (compact separators, UTF-8), so one problem reads the same from
# the API, the 404/500 handlers and the WSGI middlewares.
PROBLEM_JSON = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}


def problem_json(code: str, detail: str, extra: dict | None = None) -> bytes:
    return json.dumps(problem_body(code, detail, extra), **PROBLEM_JSON).encode()


def problem_response(
    code: str, detail: str, *, extra: dict | None = None, headers: dict | None = None
) -> Response:
    status = PROBLEMS[code][0]
    response = Response(problem_body(code, detail, extra), status=status, headers=headers)
    response.content_type = PROBLEM_CONTENT_TYPE
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="auxot"'
    return response


def django_problem(code: str, detail: str) -> JsonResponse:
    """The same body for plain Django views (404/500 handlers under /v1/)."""
    return JsonResponse(
        problem_body(code, detail), status=PROBLEMS[code][0], content_type=PROBLEM_CONTENT_TYPE,
        json_dumps_params=PROBLEM_JSON)


_DRF_CODES = {
    drf_exceptions.ParseError: "invalid_json",
    drf_exceptions.NotAuthenticated: "unauthorized",
    drf_exceptions.AuthenticationFailed: "unauthorized",
    drf_exceptions.PermissionDenied: "forbidden",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
    drf_exceptions.ValidationError: "validation_failed",
}


class JSONWhateverAccepted(DefaultContentNegotiation):
    """The API speaks JSON: an `Accept` it cannot meet (`application/xml`, a browser's
    `text/html`, `application/problem+json` on a 2xx) or a `?format=` it does not have gets
    JSON, as RFC 9110 allows, not DRF's 406 (which, raised before authentication, was a 500
    on every endpoint) or 404. Views with several renderers (the schema's YAML or JSON) still
    choose among them by `Accept` or `?format=`."""

    def filter_renderers(self, renderers, format):
        try:
            return super().filter_renderers(renderers, format)
        except Http404:
            return renderers

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except drf_exceptions.NotAcceptable:
            return renderers[0], renderers[0].media_type


def exception_handler(exc: Exception, context: dict) -> Response | None:
    request = context.get("request")
    if request is not None:
        # A problem is JSON whatever renderer the view itself uses (the schema's YAML, the
        # docs' HTML), and whatever the caller asked for in Accept.
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
    if isinstance(exc, Http404):
        return problem_response("not_found", NOT_FOUND_DETAIL)
    if isinstance(exc, ApplicationError):
        return problem_response(exc.code, exc.detail, extra=exc.extra, headers=exc.headers)
    if isinstance(exc, DataError):
        # A value the database refuses is bad input, not an outage (and never a 500). Its
        # class and SQLSTATE only: PostgreSQL's message quotes the value it refused and its
        # CONTEXT a stretch of the JSON around it (a caller's body, a token in it).
        cause = exc.__cause__ or exc
        logger.warning("database refused a value: %s (SQLSTATE %s)", type(cause).__name__,
                       getattr(cause, "sqlstate", None) or "unknown")
        return problem_response("invalid_request", "A value in the request cannot be stored.")
    if isinstance(exc, OperationalError | InterfaceError):
        # A 202 is a promise that the item is stored: never fake one when we cannot store.
        logger.error("database unavailable: %s", type(exc).__name__)
        return problem_response(
            "database_unavailable",
            "The database is unavailable; nothing was accepted. Retry later.",
            headers={"Retry-After": "5"},
        )
    for exc_type, code in _DRF_CODES.items():
        if isinstance(exc, exc_type):
            if code == "validation_failed":
                return problem_response(code, "The request failed validation.",
                                        extra={"errors": exc.detail})
            return problem_response(code, str(exc.detail))
    if isinstance(exc, drf_exceptions.APIException):  # never DRF's own body, never a 500
        # A code of its class, not the first of its status (a 400 is not "invalid JSON").
        code = "invalid_request" if 400 <= exc.status_code < 500 else "internal_error"
        logger.warning("unmapped API exception %s (%s)", type(exc).__name__, exc.status_code)
        if isinstance(exc.detail, dict | list):
            return problem_response(code, "The request was refused.",
                                    extra={"errors": exc.detail})
        return problem_response(code, str(exc.detail))
    return None
