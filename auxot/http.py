"""Small HTTP rules every app reads the same way: who is calling, and when to come back."""

import functools
import ipaddress
import math
import re
from collections.abc import Mapping
from datetime import datetime

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest
from django.utils.http import parse_http_date_safe
from django.views.defaults import bad_request

from auxot.views import is_api_path


def peer_ip(request: HttpRequest) -> str | None:
    """The address of whoever opened the connection: the proxy's, behind a proxy."""
    return meta_peer_ip(request.META)


def meta_peer_ip(meta: Mapping) -> str | None:
    """REMOTE_ADDR of a request's META or of a WSGI environ, written as client_ip writes an
    address (a dual-stack socket's IPv4-mapped peer as its IPv4, no IPv6 zone); None when
    it is not an address (a unix socket's peer)."""
    address = _address(meta.get("REMOTE_ADDR") or "")
    return str(address) if address is not None else None


def came_through_proxy(meta: Mapping) -> bool:
    """The request carries X-Forwarded-For or Forwarded: its peer is a proxy, not the caller."""
    return bool(meta.get("HTTP_X_FORWARDED_FOR") or meta.get("HTTP_FORWARDED"))


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address: the peer's, unless the peer is a trusted proxy
    (AUXOT_TRUSTED_PROXIES), then the nearest address in the forwarding header
    (AUXOT_FORWARDED_HEADER: X-Forwarded-For, or Forwarded's `for=`) that is not one (with
    `*`, any peer is the one proxy in front: the last address, the one it appended).

    Walked from the right, as the proxies appended it: every address left of the first one
    not trusted is the caller's own say and could be anything (a caller that sends
    `X-Forwarded-For: 10.0.0.1` through nginx arrives as `10.0.0.1, <its real address>`).
    An entry that is not an address stops the walk at the proxy that passed it on. Gunicorn
    (forwarded_allow_ips) believes only the scheme from a proxy, never the address."""
    peer = peer_ip(request)
    if settings.AUXOT_TRUSTED_PROXIES == ["*"]:
        # Whatever the peer, it is the one proxy in front: the address it appended.
        appended = _address(_hops(request.META)[-1])
        return str(appended) if appended and peer else peer
    if not _trusted(_address(peer or "")):
        return peer  # as written by _address: one caller is one string in every audit row
    hop = peer
    for entry in reversed(_hops(request.META)[-_MAX_HOPS:]):
        address = _address(entry)
        if address is None:
            return hop
        hop = str(address)
        if not _trusted(address):
            return hop
    return hop


_MAX_HOPS = 32  # more proxies than this in a chain is a header built to cost us time


def _hops(meta: Mapping) -> list[str]:
    """The forwarding header's entries, the nearest proxy's last, each as written (an
    address, maybe with a port, or anything at all: _address judges it). At least one."""
    if settings.AUXOT_FORWARDED_HEADER == "Forwarded":
        return forwarded_for(meta.get("HTTP_FORWARDED", ""))
    return meta.get("HTTP_X_FORWARDED_FOR", "").split(",")


# RFC 7239's Forwarded: elements split by ",", pairs by ";", a value a token or a
# quoted-string (which may hold either separator and backslash escapes). A quoted-string
# left open runs to the header's end (one garbage hop), so no match is ever retried from a
# later quote: the scan stays linear whatever the header holds.
_FORWARDED_PARTS = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[^",;]+|[,;]', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)")


def forwarded_for(header: str) -> list[str]:
    """The `for=` of each element of a Forwarded header (RFC 7239), in order: `"[v6]:port"`
    unquoted, `unknown` and obfuscated names (`_hidden`) as written. An element without a
    `for=`, with two, or with a pair that is not `name=value` is "": not an address, so a
    walk over the chain stops at the proxy that passed it on."""
    hops: list[str] = []
    pairs: dict[str, str] | None = {}
    text = ""
    for match in _FORWARDED_PARTS.finditer(header):
        part = match.group()
        if part not in (",", ";"):
            text += part
            continue
        pairs = _forwarded_pair(text, pairs)
        text = ""
        if part == ",":
            hops.append((pairs or {}).get("for", ""))
            pairs = {}
    hops.append((_forwarded_pair(text, pairs) or {}).get("for", ""))
    return hops


def _forwarded_pair(text: str, pairs: dict[str, str] | None) -> dict[str, str] | None:
    """`pairs` with `text` (one `name=value`) added; None once the element is malformed."""
    if pairs is None or not text.strip():
        return pairs  # an empty pair (`for=a;;by=b`) is allowed; a broken element stays so
    name, sep, value = text.partition("=")
    name, value = name.strip().lower(), value.strip()
    if not sep or not name or name in pairs:
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return {**pairs, name: value}
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(entry: str) -> _Address | None:
    """An X-Forwarded-For entry (or a peer) as an address ("[v6]:port" and "v4:port"
    tolerated); an IPv4-mapped IPv6 address (a dual-stack socket's peer) as its IPv4; an
    IPv6 zone (`fe80::1%eth0`) dropped: it names an interface of the host that wrote it,
    any text at all may follow the `%`, and the databases store the address without it."""
    text = entry.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.version == 6 and address.scope_id:
        return ipaddress.IPv6Address(address.packed)
    return address


def _trusted(address: _Address | None) -> bool:
    networks = settings.AUXOT_TRUSTED_PROXIES
    if not networks or address is None:
        return False
    return any(address in net for net in _networks(tuple(networks)))


@functools.lru_cache(maxsize=8)
def _networks(networks: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(net, strict=False) for net in networks)


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
