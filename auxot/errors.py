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
                    "work id), that the intake is active, and that this key may use it (a team "
                    "key: only its team's intakes).")

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
    "unsupported_media_type": (415, "Unsupported media type"),
    "validation_failed": (422, "Request failed validation"),
    "idempotency_key_reused": (422, "Idempotency-Key reused with a different body"),
    "rate_limited": (429, "Too many requests"),
    "internal_error": (500, "Internal server error"),
    "database_unavailable": (503, "Service temporarily unavailable"),
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
        # A value the database refuses is bad input, not an outage (and never a 500).
        logger.warning("database refused a value: %s", exc)
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
