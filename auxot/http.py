"""Small HTTP rules every app reads the same way: who is calling, and when to come back."""

import math
import re
from datetime import datetime

from django.core.exceptions import BadRequest
from django.http import HttpRequest
from django.utils.http import parse_http_date_safe
from django.views.defaults import bad_request

from auxot.views import is_api_path


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address as the WSGI server saw it (the proxy in front sets it)."""
    return request.META.get("REMOTE_ADDR") or None


_DELTA_SECONDS = re.compile(r"[0-9]{1,30}", re.ASCII)  # RFC 9110: 1*DIGIT, ASCII digits only


def retry_after_seconds(value: str | None, *, now: datetime,
                        cap: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP-date), or None.

    The value comes from a server we called, so anything may be in it: this never raises.
    A date in the past is 0; an unparseable value is None (the caller's own backoff applies),
    and so is a delay too large to be a date (what `now + delay` could not hold).
    """
    raw = (value or "").strip() if isinstance(value, str) else ""
    if not raw:
        return None
    if _DELTA_SECONDS.fullmatch(raw):  # not str.isdigit(): '²' is a digit to it
        seconds = float(raw)
    else:
        stamp = parse_http_date_safe(raw)
        if stamp is None:
            return None
        seconds = stamp - now.timestamp()
    seconds = max(0.0, seconds)
    if not math.isfinite(seconds) or seconds > _LONGEST:
        return None
    return seconds if cap is None else min(seconds, cap)


_LONGEST = 100 * 365 * 86400.0  # a century: any datetime of ours plus this still fits


class NulInQueryRefused:
    """A NUL (`%00`) in a page's querystring is a 400 at once.

    PostgreSQL refuses NUL in text parameters only when a query runs, so any admin list
    filter (`?event=%00`), its CSV export or an autocomplete term raised DataError: a 500.
    No page takes a NUL on purpose. The API (`/v1/`) reads its own parameters and answers
    their problems itself, so it is left to them.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        raw = request.META.get("QUERY_STRING", "")
        if raw and ("%00" in raw or "\x00" in raw) and not is_api_path(request.path):
            return bad_request(request, BadRequest("A NUL character in the query string."))
        return self.get_response(request)
