"""The callback URL policy (SSRF), enforced twice:

1. when a URL is saved or sent in a header (`callback_url_validate`): scheme, shape, and
   literal addresses, for a fast, clear 4xx;
2. on every connection (`SafeSession`): the host is resolved, every address checked, and
   the socket connects to the checked address (Host header and TLS SNI keep the name), so
   DNS rebinding between check and connect cannot reach an internal address.
"""

import contextlib
import ipaddress
import re
import socket
import threading
from collections.abc import Iterator
from functools import cache
from urllib.parse import SplitResult, urlsplit, urlunsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_URL = 2000
# Hosts made only of numbers and 0x-hex labels (2130706433, 0x7f000001, 0177.1): resolvers
# read them as IPv4 addresses in forms humans do not recognise. Refused outright.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class RefusedDestination(Exception):
    """A URL or address the policy refuses; the message is safe to show and store."""


def _nonstandard_number(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(_NUMERIC_HOST.match(host))
    return False


@cache
def _allowed_networks(raw: tuple[str, ...]) -> list:
    return [ipaddress.ip_network(net, strict=False) for net in raw]


def _allowed(ip) -> bool:
    nets = _allowed_networks(tuple(settings.AUXOT_CALLBACK_ALLOWED_NETWORKS))
    return any(ip.version == net.version and ip in net for net in nets)


def _why_refused(ip) -> str | None:
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    checks = [
        ("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"), ("is_private", "a private address"),
    ]
    for attribute, reason in checks:
        if getattr(ip, attribute):
            return reason
    if ip.version == 4 and ip in _CGNAT:
        return "a carrier-grade NAT (100.64.0.0/10) address"
    if not ip.is_global:
        return "not a public address"
    return None


def address_check(address: str) -> None:
    """Raise RefusedDestination unless this IP may receive callbacks."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if _allowed(ip):
        return
    reason = _why_refused(ip)
    if reason:
        raise RefusedDestination(
            f"{ip} is {reason}; callbacks may not go there (SSRF policy; on-premises "
            "receivers need AUXOT_CALLBACK_ALLOWED_NETWORKS)")


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise RefusedDestination(f"The callback URL must be 1 to {MAX_URL} characters.")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise RefusedDestination("The callback URL contains whitespace or control characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise RefusedDestination(f"The callback URL is malformed: {exc}.") from None
    return parts


def callback_url_validate(url: str) -> str:
    """Check a callback URL's shape and literal host; return it unchanged or raise."""
    parts = _split(url)
    allowed = ("https", "http") if settings.AUXOT_CALLBACK_ALLOW_HTTP else ("https",)
    if parts.scheme not in allowed:
        raise RefusedDestination(
            f"The callback URL must use {' or '.join(allowed)} (got {parts.scheme or 'none'!r}).")
    host = parts.hostname or ""
    if not host:
        raise RefusedDestination("The callback URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise RefusedDestination("The callback URL may not carry user:password@; "
                                 "authenticate the receiver with the signature.")
    if parts.fragment:
        raise RefusedDestination("The callback URL may not have a #fragment.")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if _NUMERIC_HOST.match(host):
            raise RefusedDestination(
                f"The callback host {host!r} is a numeric address in a non-standard form."
            ) from None
        return url
    address_check(str(ip))
    return url


def url_redact(url: str) -> str:
    """The URL without query values (they often carry tokens), for display and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    query = "&".join(f"{pair.split('=', 1)[0]}=REDACTED" for pair in parts.query.split("&")
                     if pair)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _resolve_checked(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RefusedDestination(f"Cannot resolve {host!r}: {exc.strerror}.") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:  # every answer: a round-robin must not smuggle in a bad one
        address_check(address)
    return addresses[0]


_local = threading.local()


class Deadline:
    """A wall-clock limit for a whole exchange: per-read timeouts alone let a receiver that
    dribbles one byte at a time hold a worker (and outlive the delivery's lease)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        if self.expired:
            self._expire()

    def _expire(self) -> None:
        self.expired = True
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once


@contextlib.contextmanager
def total_deadline(seconds: float) -> Iterator[Deadline]:
    deadline = Deadline(seconds)
    _local.deadline = deadline
    deadline._timer.start()
    try:
        yield deadline
    finally:
        deadline._timer.cancel()
        _local.deadline = None


class _CheckedConnectionMixin:
    def _new_conn(self):
        if _nonstandard_number(self._dns_host):
            raise RefusedDestination(f"The host {self._dns_host!r} is a non-standard number.")
        original = self._dns_host
        # Connect to the address we checked; self.host (Host header, SNI, cert) is unchanged.
        self._dns_host = _resolve_checked(original, self.port)
        try:
            sock = super()._new_conn()
        finally:
            self._dns_host = original
        deadline = getattr(_local, "deadline", None)
        if deadline is not None:
            deadline.watch(sock)
        return sock


class CheckedHTTPConnection(_CheckedConnectionMixin, HTTPConnection):
    pass


class CheckedHTTPSConnection(_CheckedConnectionMixin, HTTPSConnection):
    pass


class CheckedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class CheckedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


class CheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": CheckedHTTPConnectionPool, "https": CheckedHTTPSConnectionPool}
        self.poolmanager.key_fn_by_scheme = dict(self.poolmanager.key_fn_by_scheme)


def safe_session() -> requests.Session:
    """A session that enforces the policy on every connection and ignores env proxies."""
    session = requests.Session()
    session.trust_env = False  # a proxy would connect on our behalf, unchecked
    adapter = CheckedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
