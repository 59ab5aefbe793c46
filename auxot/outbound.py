"""The one guard for every request the server sends (callbacks, `http` steps, agent providers).

Tenants choose these URLs, so each is hostile. The policy is enforced twice:

1. `url_check` (when a URL is saved, and again before every request): scheme, shape, no
   userinfo, and the literal host (non-standard numbers, percent-encoding, IDNA tricks,
   `localhost`) for a fast, clear refusal;
2. on every connection: the host is resolved, EVERY address is checked, and the socket
   connects to the checked address (Host header and TLS SNI keep the name), so DNS
   rebinding between check and connect cannot reach an internal address. No redirects
   are followed and environment proxies are ignored.

`AUXOT_OUTBOUND_ALLOWED_NETWORKS` / `AUXOT_OUTBOUND_ALLOWED_HOSTS` exempt an install's own
receivers from the address policy for what an organization's admin configures (steps,
providers, an intake's callback URL). A callback URL a caller sends (`Auxot-Callback-Url`,
purpose `caller_callback`) is any key holder's input: only
`AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS` exempts it. Nothing else does.

Connections are kept alive and shared between calls and threads (per purpose and policy,
bounded), since opening one per request cost most of a sender's CPU; no session state is
shared (no cookies, auth or headers). One watchdog thread enforces every exchange's
wall-clock deadline, on new and reused connections alike.
"""

import contextlib
import heapq
import ipaddress
import itertools
import logging
import os
import queue
import re
import socket
import threading
import time
from functools import cache, lru_cache
from typing import Any, Literal, NamedTuple
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit, urlunsplit

import idna
import requests
import urllib3
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_ACCEPT_ENCODING, default_headers, requote_uri
from urllib3 import HTTPHeaderDict
from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import parse_url

logger = logging.getLogger(__name__)

Purpose = Literal["callback", "caller_callback", "http", "agent"]
_WHAT = {"callback": "The callback URL", "caller_callback": "The callback URL",
         "http": "The http step URL", "agent": "The provider URL"}
_WHO = {"callback": "callbacks", "caller_callback": "callbacks", "http": "http steps",
        "agent": "agent providers"}
CALLBACKS = ("callback", "caller_callback")

MAX_URL = 2000
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a hostile server must not fill a worker's memory
MAX_RESPONSE_READS = 65536  # ... nor its CPU with tiny chunks (8 MiB in 128-byte pieces)
# Hosts made only of numbers and 0x-hex labels (2130706433, 0x7f000001, 0177.1): resolvers
# read them as IPv4 addresses in forms humans do not recognise. Refused outright.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

_N = ipaddress.ip_network
_NAT64 = _N("64:ff9b::/96")
_NAT64_LOCAL = _N("64:ff9b:1::/48")
_V4_COMPATIBLE = _N("::/96")
# Special-purpose ranges (IANA registries), named so a refusal says what the address is.
# The standard library's flags (which differ between Python versions) are checked after.
_V4_BLOCKED = [
    (_N("0.0.0.0/8"), "an unspecified (\"this network\") address"),
    (_N("100.64.0.0/10"), "a carrier-grade NAT (100.64.0.0/10) address"),
    (_N("192.0.0.0/24"), "an IETF protocol assignment address"),
    (_N("192.0.2.0/24"), "a documentation address"),
    (_N("198.51.100.0/24"), "a documentation address"),
    (_N("203.0.113.0/24"), "a documentation address"),
    (_N("198.18.0.0/15"), "a benchmarking address"),
    (_N("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_N("255.255.255.255/32"), "the broadcast address"),
]
_V6_BLOCKED = [
    (_NAT64_LOCAL, "a local-use NAT64 address"),
    (_N("100::/64"), "a discard-only address"),
    (_N("2001::/32"), "a Teredo address"),
    (_N("2001:db8::/32"), "a documentation address"),
    (_N("3fff::/20"), "a documentation address"),
    (_N("2001:10::/28"), "an ORCHID address"),
    (_N("2001:20::/28"), "an ORCHIDv2 address"),
    (_N("5f00::/16"), "a segment-routing (SRv6) address"),
    (_N("fc00::/7"), "a unique-local (ULA) address"),
    (_N("fec0::/10"), "a site-local address"),
]
_FLAGS = [
    ("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
    ("is_reserved", "a reserved address"), ("is_private", "a private address"),
]


class RefusedDestination(Exception):
    """A URL or address the policy refuses; the message is safe to show and store.

    `code` is `ssrf_refused` for a destination the policy forbids, `bad_url` for a URL
    that is not a usable absolute URL at all, and `bad_header` for a header the request
    may not carry (`headers_check`).
    """

    def __init__(self, message: str, *, code: str = "ssrf_refused"):
        super().__init__(message)
        self.code = code


# --- Address policy -----------------------------------------------------------------------

@cache
def _networks(raw: tuple[str, ...]) -> list:
    return [ipaddress.ip_network(net, strict=False) for net in raw]


def _allowed_networks(purpose: Purpose) -> tuple[str, ...]:
    if purpose == "caller_callback":  # a caller's URL: the operator's own list is not theirs
        return tuple(settings.AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS)
    return tuple(settings.AUXOT_OUTBOUND_ALLOWED_NETWORKS)


def _allowed_address(ip, purpose: Purpose) -> bool:
    nets = _networks(_allowed_networks(purpose))
    return any(ip.version == net.version and ip in net for net in nets)


def _allowed_host(host: str, purpose: Purpose) -> bool:
    return purpose != "caller_callback" and (
        host.rstrip(".").lower() in settings.AUXOT_OUTBOUND_ALLOWED_HOSTS)


def _allow_hint(purpose: Purpose) -> str:
    if purpose == "caller_callback":
        return "a caller's callback URL may reach an install's own receivers only with " \
               "AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS"
    return "an install's own receivers need AUXOT_OUTBOUND_ALLOWED_NETWORKS or " \
           "AUXOT_OUTBOUND_ALLOWED_HOSTS"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses a tunnel or translation prefix would deliver to."""
    found = []
    if ip.sixtofour is not None:
        found.append(("a 6to4 address", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("a Teredo address", server), ("a Teredo address", client)]
    if ip in _NAT64 or ip in _NAT64_LOCAL:  # the IPv4 sits in the last 32 bits (a /96)
        found.append(("a NAT64 address", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    return found


def _why_refused(ip) -> str | None:
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return f"an IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
        if ip in _V4_COMPATIBLE and not (ip.is_unspecified or ip.is_loopback):
            return "an IPv4-compatible IPv6 address"
        for label, inner in _embedded_ipv4(ip):
            why = _why_refused(inner)
            if why:
                return f"{label} embedding {inner}, {why}"
        if ip in _NAT64:
            return None  # the well-known NAT64 prefix reaches the public IPv4 checked above
    for net, reason in _V4_BLOCKED if ip.version == 4 else _V6_BLOCKED:
        if ip in net:
            return reason
    for attribute, reason in _FLAGS:
        if getattr(ip, attribute):
            return reason
    if not ip.is_global:
        return "not a public address"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def address_check(address: str, *, host: str = "", purpose: Purpose = "callback") -> None:
    """Raise RefusedDestination unless `purpose` may send to this IP address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if _allowed_address(ip, purpose):
        return
    reason = _why_refused(ip)
    if reason:
        if host and not _is_ip(host):
            logger.info("outbound refused: %s resolves to %s (%s)", host, reason, purpose)
            raise RefusedDestination(_name_refusal(host, purpose))
        raise RefusedDestination(
            f"{host or ip} is {reason}; {_WHO[purpose]} may not go there (outbound request "
            f"policy; {_allow_hint(purpose)})")


def _name_refusal(host: str, purpose: Purpose) -> str:
    """What a tenant is told about a name that resolves to no address it may use: the same
    words whether it does not resolve at all or resolves inside a private network (and
    never the address), so a caller's Auxot-Callback-Url or an admin's step URL cannot map
    the server's internal DNS. The operators' log has the reason."""
    return (f"{host} does not resolve to a public address; {_WHO[purpose]} may not go there "
            f"(outbound request policy; {_allow_hint(purpose)})")


# --- URL checks -----------------------------------------------------------------------------

def _split(url: Any, what: str) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise RefusedDestination(f"{what} must be 1 to {MAX_URL} characters.", code="bad_url")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise RefusedDestination(f"{what} contains whitespace or control characters.",
                                 code="bad_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise RefusedDestination(f"{what} is malformed: {exc}.", code="bad_url") from None
    return parts


def _schemes(purpose: Purpose) -> tuple[str, ...]:
    if purpose in CALLBACKS and not settings.AUXOT_CALLBACK_ALLOW_HTTP:
        return ("https",)
    return ("https", "http")  # steps and providers: the address policy is what protects


def _ascii_host(host: str, what: str) -> str:
    if host.isascii():
        return host.lower()
    try:  # what requests will send: UTS 46 folds look-alike (fullwidth) digits
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise RefusedDestination(f"{what} has an invalid host name {host!r}.") from None


def _nonstandard_number(host: str) -> str | None:
    """The IPv4 address a non-standard numeric host stands for, or None."""
    if not _NUMERIC_HOST.match(host) or _is_ip(host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host.rstrip(".")))
    except OSError:
        return "no valid address"


def host_check(host: str, *, purpose: Purpose) -> None:
    """The literal host policy (no DNS): numbers in every spelling, encodings, loopback names."""
    what = _WHAT[purpose]
    if ":" in host:  # an IPv6 literal (brackets already removed)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # includes zone ids (%25eth0): link-local anyway
            raise RefusedDestination(f"{what} has an invalid IPv6 host {host!r}.") from None
        return address_check(str(ip), host=host, purpose=purpose)
    if "%" in host:
        raise RefusedDestination(f"{what} host {host!r} is percent-encoded; write the host "
                                 "plainly (percent-encoding is refused in hosts).")
    host = _ascii_host(host, what)
    if not _HOST_NAME.match(host):
        raise RefusedDestination(f"{what} host {host!r} has characters a host name may not have.")
    name = host.rstrip(".")
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        # The resolver cannot even encode it: it raised UnicodeError from every way out.
        raise RefusedDestination(f"{what} host is not a usable host name (a label of more than "
                                 "63 characters, or more than 253 in all).", code="bad_url")
    if _allowed_host(host, purpose):
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address_check(str(ip), host=host, purpose=purpose)
    decoded = _nonstandard_number(host)
    if decoded:
        raise RefusedDestination(f"{what} host {host!r} is a number in a non-standard form "
                                 f"({decoded}); write IPv4 addresses as four decimal numbers.")
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        address_check("127.0.0.1", host=name, purpose=purpose)


# A header's name is an RFC 9110 token; its value is visible ASCII or obs-text (0x80-0xFF,
# sent as Latin-1), with spaces and tabs after its first character. Anything else is
# refused before a connection is opened: CR and LF would split the header, NUL and other
# controls are read differently by a receiver and the proxies in front of it, and a
# character Latin-1 cannot encode made http.client fail half-way through the request, with
# a message quoting the character and its position (of a secret's value, too).
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_FIELD_VALUE = re.compile(r"([\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?")
# Headers the connection writes itself, from the URL and the body. A caller's `Host` reaches
# another virtual host of the server the URL names (behind one ingress, the neighbours of an
# allowed host, AUXOT_OUTBOUND_ALLOWED_HOSTS); its own framing (`Transfer-Encoding` went out
# beside requests' `Content-Length`) or hop-by-hop headers make the receiver, or a proxy in
# front of it, read the request otherwise than it was sent.
_CONNECTION_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
    "te", "trailer", "proxy-connection"})


def header_name_problem(name: Any) -> str | None:
    """Why a request may not carry a header of this name (a sentence's end), or None."""
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        return f"{shown} is not a valid header name (letters, digits and !#$%&'*+.^_`|~-)"
    if name.lower() in _CONNECTION_HEADERS:
        return (f"{name} is written by the connection itself, from the URL and the body "
                "(it may not be set)")
    return None


def headers_check(headers: Any) -> None:
    """Raise RefusedDestination (`bad_header`) unless every header may be sent as it is.

    The message names the header, never its value: a value may be a secret, or what a
    caller's payload put there. (None, which removes a default, is always fine.)"""
    for name, value in (headers or {}).items():
        if value is None:
            continue
        problem = header_name_problem(name)
        if problem:
            raise RefusedDestination(f"The header {problem}.", code="bad_header")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not (isinstance(value, str) and _FIELD_VALUE.fullmatch(value)):
            raise RefusedDestination(
                f"The {name} header's value cannot be sent: it has a line break, a control "
                "character, leading whitespace or a character outside Latin-1 (the value is "
                "not shown).", code="bad_header")


def url_check(url: Any, *, purpose: Purpose) -> str:
    """Check a URL's scheme, shape and literal host for `purpose`; return it or raise.

    Runs when a URL is saved and before every request; the connection check still decides.
    """
    what = _WHAT[purpose]
    parts = _split(url, what)
    allowed = _schemes(purpose)
    if parts.scheme not in allowed:
        raise RefusedDestination(f"{what} must use {' or '.join(allowed)} "
                                 f"(got {parts.scheme or 'none'!r}).", code="bad_url")
    if "@" in parts.netloc:
        raise RefusedDestination(f"{what} may not carry user:password@ (userinfo); send "
                                 "credentials in a header.")
    host = parts.hostname or ""
    if not host:
        raise RefusedDestination(f"{what} has no host.", code="bad_url")
    if "[" in parts.netloc and ":" not in host:  # `[v1.x]`: brackets hold IPv6 literals only
        raise RefusedDestination(f"{what} has an invalid IPv6 host {host!r}.", code="bad_url")
    if parts.port == 0:
        raise RefusedDestination(f"{what} has port 0; use 1 to 65535.", code="bad_url")
    if "\\" in parts.netloc:
        raise RefusedDestination(f"{what} has a backslash in its host.")
    if purpose in CALLBACKS and parts.fragment:
        raise RefusedDestination(f"{what} may not have a #fragment.", code="bad_url")
    host_check(host, purpose=purpose)
    return url


def host_key(host: str) -> str:
    """One name per host, whatever its spelling: lower case, the IDNA (UTS 46) form the
    connection uses for a non-ASCII name (fullwidth letters fold to ASCII), without the
    trailing dot of a fully qualified name. For keys (a breaker, a concurrency cap), not for
    checks: `host_check` decides what may be reached."""
    name = host.rstrip(".")
    try:
        return _ascii_host(name, "host")
    except RefusedDestination:
        return name.lower()


# A path's first segment shows when it reads as a route's name (lower-case letters, `.`, `_`,
# `-`): a generated token mixes cases or has digits. No other segment shows.
_PATH_WORD = re.compile(r"^[a-z][a-z._-]{0,31}$")
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)


def _path_redact(path: str) -> str:
    """Chat and automation services put their tokens in the path (Slack's
    /services/T…/B…/<token>, Discord's /api/webhooks/<id>/<token>, Zapier's
    /hooks/catch/<account>/<hook>/, webhook.site/<uuid>): every segment is hidden except a
    first one that names a receiver's route (`/hooks`, `/webhooks`, `/auxot`)."""
    segments = path.split("/")
    return "/".join(segment if not segment or (index == 1 and _PATH_WORD.match(segment))
                    else "REDACTED" for index, segment in enumerate(segments))


def _query_redact(query: str) -> str:
    """Names stay, values go; a part without `=` is all value (`?<token>`)."""
    return "&".join(f"{pair.split('=', 1)[0]}=REDACTED" if "=" in pair else "REDACTED"
                    for pair in query.split("&") if pair)


def url_redact(url: str) -> str:
    """The URL for display: no userinfo, no query values, no path segment but a route's name
    first (tokens ride in all three). The host shows: it names the receiver."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(malformed URL)"
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, _path_redact(parts.path),
                       _query_redact(parts.query), ""))


def parts_redacted(value: Any, parts: tuple[str, ...]) -> Any:
    """`value` (text, or JSON: dicts and lists, keys too) with each of `parts` replaced by
    REDACTED, longest first as given (`url_hidden_parts`; an http step's secrets): what a
    library's message or a receiver's answer quotes of what was hidden from it."""
    if not parts:
        return value
    if isinstance(value, str):
        for part in parts:
            value = value.replace(part, "REDACTED")
        return value
    if isinstance(value, dict):
        return {parts_redacted(key, parts): parts_redacted(item, parts)
                for key, item in value.items()}
    if isinstance(value, list):
        return [parts_redacted(item, parts) for item in value]
    return value


def urls_redacted(value: Any) -> Any:
    """`value` (text, or JSON: dicts and lists) with every http(s) URL in it redacted: for
    what was recorded before `url_redact` hid as much as it does now (an audit row)."""
    if isinstance(value, str):
        return _URL_IN_TEXT.sub(lambda found: url_redact(found.group(0)), value)
    if isinstance(value, dict):
        return {key: urls_redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [urls_redacted(item) for item in value]
    return value


@lru_cache(maxsize=1024)  # once per URL, not per attempt: a dispatcher sends to few URLs
def url_hidden_parts(url: str) -> tuple[str, ...]:
    """What `url_redact` hides, as it may be quoted in a text (a library's message, a
    receiver's error page): the query whole, each of its parts and values, the userinfo,
    the hidden path segments, each also percent-decoded and as sent; longest first. Parts
    shorter than 4 characters are left out (they hold no token, and replacing them would
    garble the text)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return (url,) if url else ()
    hidden = [parts.query, parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""]
    for pair in parts.query.split("&"):
        value = pair.partition("=")[2]
        # A value quoted alone is cut unless it is a plain word (`format=json`,
        # `debug=true`): every "json" of a stored answer would go too.
        hidden += [pair, "" if _PATH_WORD.match(value) else value]
    redacted = _path_redact(parts.path).split("/")
    hidden += [segment for segment, shown in zip(parts.path.split("/"), redacted, strict=True)
               if shown == "REDACTED"]
    hidden += ([unquote_plus(part) for part in hidden] + [unquote(part) for part in hidden]
               + [requote_uri(part) for part in hidden])  # as decoded, and as sent
    return tuple(sorted({part for part in hidden if len(part) >= 4}, key=len, reverse=True))


# --- Connection-time check ------------------------------------------------------------------

_local = threading.local()


def _getaddrinfo_within(host: str, port: int, deadline: "Deadline | None") -> list:
    """socket.getaddrinfo, given up when the exchange's deadline passes. The resolver cannot
    be interrupted and the deadline watchdog can only shut sockets, so the lookup runs in a
    thread of its own (a new connection's cost, not a request's: kept-alive connections skip
    it) and a name server that never answers holds that thread, not the sender."""
    if deadline is None or _is_ip(host):  # an address: nothing to look up
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    answer: list = []
    done = threading.Event()

    def look_up() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the sender
            answer.append(exc)
        finally:
            done.set()

    threading.Thread(target=look_up, name="auxot-outbound-resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline.at - time.monotonic())):
        deadline.expired = True  # as the watchdog is about to say: the exchange timed out
        raise TimeoutError(f"resolving {host!r} took longer than the exchange's deadline")
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def _resolve_checked(host: str, port: int) -> str:
    purpose = getattr(_local, "purpose", None) or "callback"
    decoded = _nonstandard_number(host)
    if decoded:
        raise RefusedDestination(f"The host {host!r} is a number in a non-standard form "
                                 f"({decoded}).")
    try:
        infos = _getaddrinfo_within(host, port, getattr(_local, "deadline", None))
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: the name cannot be encoded
        logger.info("outbound refused: cannot resolve %s: %s (%s)", host,
                    getattr(exc, "strerror", None) or exc, purpose)
        raise RefusedDestination(_name_refusal(host, purpose)) from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not _allowed_host(host, purpose):
        for address in addresses:  # every answer: a round-robin must not smuggle in a bad one
            address_check(address, host=host, purpose=purpose)
    return addresses[0]


# --- The whole-exchange deadline: one watchdog thread ---------------------------------------

class Deadline:
    """A wall-clock limit for a whole exchange: per-read timeouts alone let a receiver that
    dribbles one byte at a time hold a worker (and outlive its lease).

    `sockets` are the ones the exchange is using now; when `at` passes, the watchdog shuts
    them and sets `expired`. A connection going back to the pool leaves the list first, so a
    late deadline can never cut the next exchange that takes it.
    """

    __slots__ = ("at", "done", "expired", "sockets")

    def __init__(self, at: float):
        self.at = at
        self.done = False  # the exchange is over: nothing left to cut
        self.expired = False
        self.sockets: list[socket.socket] = []


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)  # the blocked read or write returns at once


class _Watchdog:
    """One daemon thread for every exchange's deadline (a heap by time), instead of a
    Timer thread per request. Every change happens under one lock, so a socket taken off
    a deadline's list is never shut by it afterwards."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> Deadline:
        deadline = Deadline(time.monotonic() + seconds)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="auxot-outbound-deadline",
                                                daemon=True)
                self._thread.start()
            sooner = not self._heap or deadline.at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if sooner:  # otherwise the thread wakes early enough already
                self._cond.notify()
        return deadline

    def watch(self, deadline: Deadline, sock: socket.socket) -> None:
        with self._cond:
            if deadline.expired:
                _shut(sock)
            elif not deadline.done:
                deadline.sockets.append(sock)

    def unwatch(self, deadline: Deadline, sock: socket.socket) -> bool:
        """Take `sock` off the deadline's list; True if the deadline had already cut it."""
        with self._cond:
            with contextlib.suppress(ValueError):
                deadline.sockets.remove(sock)
            return deadline.expired

    def finish(self, deadline: Deadline) -> None:
        with self._cond:
            deadline.done = True  # the entry leaves the heap when its time comes
            deadline.sockets.clear()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    deadline = heapq.heappop(self._heap)[2]
                    if not deadline.done:
                        deadline.expired = True
                        for sock in deadline.sockets:
                            _shut(sock)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_watchdog = _Watchdog()


# --- Checked, kept-alive connections ----------------------------------------------------------

# A pooled connection is reused only if it has been idle for less than this. A server closes
# idle connections on its own clock (gunicorn after 2 s, most others later); its FIN is seen
# before reuse (urllib3 drops a connection that reads as closed), but a close racing our
# request cannot be seen. Below every common server's limit, that race does not happen.
KEEPALIVE_IDLE_SECONDS = 1.0
POOL_IDLE_PER_HOST = 8  # idle connections kept per host; more are closed after use, not waited for
POOL_HOSTS = 64  # host pools kept per policy, least recently used closed first
POLICIES_KEPT = 8  # (purpose, allow-lists) pool sets; only tests change settings at run time
VERIFY: bool | str = True  # TLS: certifi's CA bundle, as requests does (a test trusts its own CA)


class _CheckedConnectionMixin:
    """Every new socket goes to an address `_resolve_checked` approved; every use of the
    connection, new or reused, is under the current exchange's deadline.

    The deadline shuts a duplicate of the socket (same connection, its own descriptor):
    TLS takes over the first socket object (it is left without a descriptor), and a
    descriptor number may be reused by another connection once this one closes.
    """

    _shutter: socket.socket | None = None  # the duplicate the deadline shuts
    _watched: Deadline | None = None  # the exchange using this connection now
    _idle_since = 0.0

    def _new_conn(self):
        original = self._dns_host
        # Connect to the address we checked; self.host (Host header, SNI, cert) is unchanged.
        self._dns_host = _resolve_checked(original, self.port)
        try:
            sock = super()._new_conn()
        finally:
            self._dns_host = original
        self._close_shutter()
        self._shutter = sock.dup()
        self._watched = None
        self._watch()
        return sock

    def request(self, *args, **kwargs):
        if self.sock is not None and self._watched is not getattr(_local, "deadline", None):
            self._watch()  # a reused connection: watched from its first byte on
        return super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._close_shutter()

    def _watch(self) -> None:
        deadline = getattr(_local, "deadline", None)
        if deadline is not None and self._shutter is not None:
            self._unwatch()
            _watchdog.watch(deadline, self._shutter)
            self._watched = deadline

    def _unwatch(self) -> bool:
        """Leave the exchange's deadline; True if it already cut this connection."""
        deadline, self._watched = self._watched, None
        return deadline is not None and _watchdog.unwatch(deadline, self._shutter)

    def _close_shutter(self) -> None:
        shutter, self._shutter = self._shutter, None
        if shutter is not None:
            shutter.close()  # only the duplicate descriptor: the connection is not touched


class CheckedHTTPConnection(_CheckedConnectionMixin, HTTPConnection):
    pass


class CheckedHTTPSConnection(_CheckedConnectionMixin, HTTPSConnection):
    pass


class _KeepAlivePoolMixin:
    """urllib3 gives a connection back only once its answer was read to the end; on an error,
    a timeout or an answer left unread (the `max_bytes` cap) it closes it instead. This adds:
    a connection cut by a deadline or idle too long is closed, not reused; a full pool closes
    the extra connection quietly (64 senders to one host overflow it by design)."""

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)  # urllib3 closes one that reads as dropped
        if conn.sock is not None and time.monotonic() - conn._idle_since >= KEEPALIVE_IDLE_SECONDS:
            conn.close()  # the server may be closing it as we send: a fresh one is checked
        return conn

    def _put_conn(self, conn) -> None:
        if conn is not None:
            if conn._unwatch():
                conn.close()
            conn._idle_since = time.monotonic()
        try:
            self.pool.put(conn, block=False)
        except (AttributeError, queue.Full):  # a closed pool, or enough idle connections
            if conn is not None:
                conn.close()


class CheckedHTTPConnectionPool(_KeepAlivePoolMixin, HTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class CheckedHTTPSConnectionPool(_KeepAlivePoolMixin, HTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


class CheckedAdapter(HTTPAdapter):
    """Bounded pools of checked connections; no retries (a request is sent at most once)."""

    def __init__(self) -> None:
        super().__init__(pool_connections=POOL_HOSTS, pool_maxsize=POOL_IDLE_PER_HOST,
                         pool_block=False, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": CheckedHTTPConnectionPool, "https": CheckedHTTPSConnectionPool}


_adapters: dict[tuple, CheckedAdapter] = {}
_adapters_lock = threading.Lock()


def _adapter(purpose: Purpose) -> CheckedAdapter:
    """The shared pools for `purpose` under the policy in force: a connection is reused only
    under the settings it was checked with (a changed allow-list gets fresh pools)."""
    key = (purpose, _allowed_networks(purpose), tuple(settings.AUXOT_OUTBOUND_ALLOWED_HOSTS))
    adapter = _adapters.get(key)
    if adapter is None:
        with _adapters_lock:
            adapter = _adapters.get(key)
            if adapter is None:
                adapter = _adapters[key] = CheckedAdapter()
                while len(_adapters) > POLICIES_KEPT:
                    _adapters.pop(next(iter(_adapters))).close()
    return adapter


def outbound_pools_close() -> None:
    """Close every kept-alive connection (idle ones now, busy ones when their answer ends)."""
    with _adapters_lock:
        while _adapters:
            _adapters.popitem()[1].close()


def _after_fork_in_child() -> None:
    # The parent's sockets must not be shared (two processes writing on one connection) and
    # its watchdog thread does not exist here: start again with empty pools and a new one.
    global _adapters_lock, _watchdog
    _adapters.clear()
    _adapters_lock = threading.Lock()  # another thread may have held it at the fork
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- The request ------------------------------------------------------------------------------

def _headers(headers: dict | None) -> CaseInsensitiveDict:
    """requests' defaults plus the caller's, built afresh: nothing carries over between calls
    (there is no session, so no cookie jar, auth or header a previous receiver could set)."""
    merged = default_headers()
    for name, value in (headers or {}).items():
        if value is None:  # as a requests session does: None removes a default
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _read_capped(chunks, max_bytes: int) -> bytes:
    """At most `max_bytes` of what `chunks(size)` yields (requests' `iter_content` or
    urllib3's `stream`: both decode as Content-Encoding says), in at most MAX_RESPONSE_READS
    pieces: the answer is cut at either limit.

    Gathered in one buffer: adding each chunk to a bytes object copied all that came before,
    so an answer in 4 KiB chunks cost the sender seconds of CPU per 8 MiB. Each piece costs
    microseconds of Python, so a receiver sending a chunked body one byte per chunk kept
    the sender busy (and the process's other threads waiting) for the whole timeout."""
    data = bytearray()
    for count, chunk in enumerate(chunks(min(max_bytes, 65536) or 1), start=1):
        data += chunk
        if len(data) >= max_bytes or count >= MAX_RESPONSE_READS:
            break
    return bytes(data[:max_bytes])


@contextlib.contextmanager
def _exchange(purpose: Purpose, timeout: float):
    """One exchange under its wall-clock deadline: every connection it uses is watched
    (`_CheckedConnectionMixin`), and a failure the deadline caused reads as a timeout."""
    deadline = _watchdog.start(timeout)
    _local.purpose, _local.deadline = purpose, deadline
    try:
        try:
            yield
        except requests.RequestException as exc:
            if deadline.expired:
                raise requests.Timeout(f"no complete answer within {timeout:g} s") from exc
            raise
        if deadline.expired:
            raise requests.Timeout(f"no complete answer within {timeout:g} s")
    finally:
        _watchdog.finish(deadline)
        _local.purpose = _local.deadline = None


def outbound_request(method: str, url: str, *, purpose: Purpose, timeout: float,
                     headers: dict | None = None, data: bytes | None = None,
                     json: Any = None, max_bytes: int = MAX_RESPONSE_BYTES
                     ) -> requests.Response:
    """Send one request under the policy and return the answer, body read (at most
    `max_bytes`; `response.content` holds it). Never follows redirects.

    `timeout` bounds the whole exchange (connect, send, every read). Raises
    RefusedDestination (nothing sent: a refused URL, or a header `headers_check` refuses),
    requests.Timeout or another requests exception.

    Connections are kept alive and shared (see `_adapter`): a new one is checked like any,
    a reused one was checked when it was opened. A failure on a reused connection is not
    retried, even one that looks like a stale keep-alive: the request may have reached the
    server, and sending it twice is the worse error. Stale connections are avoided instead
    (`KEEPALIVE_IDLE_SECONDS`); the callers' retries handle the rest.
    """
    url_check(url, purpose=purpose)
    headers_check(headers)
    prepared = requests.Request(method, url, headers=_headers(headers), data=data,
                                json=json).prepare()
    adapter = _adapter(purpose)
    with _exchange(purpose, timeout), \
            adapter.send(prepared, stream=True, timeout=(timeout, timeout), verify=VERIFY,
                         proxies={}) as response:  # no proxy: it would connect unchecked
        content = _read_capped(response.iter_content, max_bytes)
    # The body is read under the deadline; hand it over as if requests had read it.
    response._content = content
    response._content_consumed = True
    return response


class Answer(NamedTuple):
    """A server's answer as `outbound_post` gives it."""

    status: int
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    content: bytes  # at most max_bytes, decoded as Content-Encoding says


# What requests sends by default, less its User-Agent (callers name themselves).
_POST_HEADERS = {"Accept": "*/*", "Accept-Encoding": DEFAULT_ACCEPT_ENCODING,
                 "Connection": "keep-alive"}


def outbound_post(url: str, *, purpose: Purpose, timeout: float, body: bytes,
                  headers: dict[str, str], max_bytes: int = MAX_RESPONSE_BYTES) -> Answer:
    """`outbound_request`'s POST for a caller that needs only the answer's status, headers and
    body (the callback dispatcher's hot path): the same URL check, the same checked and
    kept-alive connections, the same deadline, cap and exceptions, without building requests'
    Request and Response objects (about a quarter of a POST's CPU, `bench/outbound.py`).
    """
    url_check(url, purpose=purpose)
    headers_check(headers)
    target = requests.PreparedRequest()  # requests picks the pool (and its TLS settings)
    if url.isascii():  # from the URL alone: nothing else of a request is needed for that
        target.url = url
    else:  # the IDNA host and quoted path requests would send
        target.prepare_url(url, None)
    adapter = _adapter(purpose)
    pool = adapter.get_connection_with_tls_context(target, VERIFY, proxies={})
    adapter.cert_verify(pool, url, VERIFY, None)  # the CA bundle requests would use
    sent = HTTPHeaderDict(_POST_HEADERS)  # names as the caller spells them, merged whatever
    sent.update(headers)  # their case (as requests does)
    with _exchange(purpose, timeout):
        try:
            response = pool.urlopen(
                "POST", parse_url(target.url).request_uri, body=body, headers=sent, retries=False,
                redirect=False, assert_same_host=False, preload_content=False,
                decode_content=True, timeout=urllib3.Timeout(connect=timeout, read=timeout))
            try:
                content = _read_capped(response.stream, max_bytes)
            finally:
                response.close()  # a connection with an answer left unread is closed
                response.release_conn()
        except u3.HTTPError as exc:  # as requests' adapter names them
            raise _requests_error(exc) from exc
        except OSError as exc:
            raise requests.ConnectionError(exc) from exc
    return Answer(response.status, {name.lower(): value
                                    for name, value in response.headers.itermerged()}, content)


def _requests_error(exc: u3.HTTPError) -> requests.RequestException:
    if isinstance(exc, u3.ConnectTimeoutError) and not isinstance(exc, u3.NewConnectionError):
        return requests.ConnectTimeout(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.ReadTimeout(exc)
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, u3.NewConnectionError | u3.ProtocolError | u3.ClosedPoolError):
        return requests.ConnectionError(exc)
    return requests.RequestException(exc)
