"""Small HTTP rules every app reads the same way: who is calling, and when to come back."""

import math
import re
from datetime import datetime

from django.http import HttpRequest
from django.utils.http import parse_http_date_safe


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
