"""X-Request-Id: kept from the caller when it is sane, made otherwise; echoed on the response,
bound to the log context for the request, and logged with status and duration at the end."""

import logging
import time
import uuid

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from auxot.http import client_ip
from auxot.logs import log_context_bind, log_context_get, log_context_reset
from auxot.metrics import http_observe

HEADER = "X-Request-Id"
MAX_LENGTH = 200
logger = logging.getLogger("auxot.request")


def request_id_valid(value: str) -> bool:
    """Printable ASCII without spaces, 1-200 characters: safe in a log line and a header."""
    return 0 < len(value) <= MAX_LENGTH and all("!" <= c <= "~" for c in value)


def request_id_for(request: HttpRequest) -> str:
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    return given if request_id_valid(given) else uuid.uuid4().hex


class RequestIdMiddleware:
    """First in MIDDLEWARE: every response, even a 400 from a later middleware, has the id."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        request.request_id = request_id_for(request)
        token = log_context_bind(request_id=request.request_id)
        try:
            response = self.get_response(request)
            response[HEADER] = request.request_id
            seconds = time.monotonic() - started
            http_observe(method=request.method, status=response.status_code, seconds=seconds)
            if settings.AUXOT_REQUEST_LOG:
                _log_request(request, response, seconds)
            return response
        finally:
            log_context_reset(token)


def _log_request(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
    # The path only (no query string: it may carry what a caller did not mean to log).
    context = log_context_get()
    logger.info("%s %s %s %.1fms", request.method, request.path, response.status_code,
                seconds * 1000, extra={
                    "event": "http.request", "method": request.method, "path": request.path,
                    "status": response.status_code, "duration_ms": round(seconds * 1000, 1),
                    # The address audit rows record: behind a proxy gunicorn's own access
                    # log names the proxy.
                    "client_ip": client_ip(request),
                    **{k: context[k] for k in ("intake_id", "work_id", "key_lookup_id")
                       if k in context}})
