"""Small HTTP rules every app reads the same way: who is calling, and when to come back."""

from datetime import datetime

from django.http import HttpRequest
from django.utils.http import parse_http_date_safe


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address as the WSGI server saw it (the proxy in front sets it)."""
    return request.META.get("REMOTE_ADDR") or None


def retry_after_seconds(value: str | None, *, now: datetime,
                        cap: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP-date), or None.

    A date in the past is 0; an unparseable value is None (the caller's own backoff applies).
    """
    raw = (value or "").strip()
    if not raw:
        return None
    if raw.isdigit():
        seconds = float(raw)
    else:
        stamp = parse_http_date_safe(raw)
        if stamp is None:
            return None
        seconds = stamp - now.timestamp()
    seconds = max(0.0, seconds)
    return seconds if cap is None else min(seconds, cap)
