"""auxot.http: the client address and Retry-After, read one way everywhere."""

from datetime import UTC, datetime

import pytest
from django.test import RequestFactory

from auxot.http import client_ip, peer_ip, retry_after_seconds

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def test_client_ip_is_the_remote_address_or_none():
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9")
    assert client_ip(request) == "203.0.113.9"
    request.META["REMOTE_ADDR"] = ""
    assert client_ip(request) is None


PROXIES = ["127.0.0.1", "::1", "10.0.0.0/8", "2001:db8:1::/48"]


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    # Not from a proxy: the header is the caller's own say, ignored.
    ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
    ("192.168.1.5", "127.0.0.1", "192.168.1.5"),
    # From a proxy: the nearest address that is not a proxy.
    ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
    ("::1", "198.51.100.1", "198.51.100.1"),
    ("::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),  # a dual-stack socket's v4 peer
    ("10.2.3.4", "198.51.100.1, 10.9.9.9", "198.51.100.1"),  # two proxies in a chain
    ("2001:db8:1::5", "2001:db8:ffff::7", "2001:db8:ffff::7"),
    # A caller that sends its own header through the proxy: the proxy appended the truth.
    ("127.0.0.1", "10.0.0.1, 198.51.100.1", "198.51.100.1"),
    ("127.0.0.1", "1.1.1.1, 2.2.2.2, 198.51.100.1", "198.51.100.1"),
    # Ports, brackets and spacing as proxies write them.
    ("127.0.0.1", " 198.51.100.1:4711 ", "198.51.100.1"),
    ("127.0.0.1", "[2001:db8:ffff::7]:443", "2001:db8:ffff::7"),
    ("127.0.0.1", "2001:DB8:FFFF::7", "2001:db8:ffff::7"),
    # Nothing usable: the last hop that said something true.
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "unknown", "127.0.0.1"),
    ("10.2.3.4", "198.51.100.1, garbage, 10.9.9.9", "10.9.9.9"),
    ("127.0.0.1", "198.51.100.1, <script>", "127.0.0.1"),
    ("127.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # only proxies: the farthest
    ("127.0.0.1", "\x00, 198.51.100.1", "198.51.100.1"),
])
def test_client_ip_reads_x_forwarded_for_only_from_a_trusted_proxy(settings, peer, forwarded,
                                                                  expected):
    settings.AUXOT_TRUSTED_PROXIES = PROXIES
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def _as_forwarded(xff: str) -> str:
    """An X-Forwarded-For chain as RFC 7239 writes it: `for=` each, IPv6 quoted in brackets."""
    def element(entry: str) -> str:
        entry = entry.strip()
        if entry.count(":") > 1 and not entry.startswith("["):
            return f'for="[{entry}]"'
        return f'for="{entry}"' if entry.startswith("[") else f"for={entry}"
    return ", ".join(element(entry) for entry in xff.split(",")) if xff else ""


# The same chains through a proxy that writes Forwarded (AUXOT_FORWARDED_HEADER=Forwarded),
# plus what only Forwarded can hold: other pairs, quoting, obfuscated and unknown nodes.
FORWARDED_CASES = [
    (peer, _as_forwarded(xff), expected)
    for peer, xff, expected in [
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.2.3.4", "198.51.100.1, 10.9.9.9", "198.51.100.1"),
        ("2001:db8:1::5", "2001:db8:ffff::7", "2001:db8:ffff::7"),
        ("127.0.0.1", "10.0.0.1, 198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1:4711", "198.51.100.1"),
        ("127.0.0.1", "[2001:db8:ffff::7]:443", "2001:db8:ffff::7"),
        ("127.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1"),
    ]
] + [
    ("127.0.0.1", "for=198.51.100.1;proto=https;by=10.0.0.1", "198.51.100.1"),
    ("127.0.0.1", "proto=https;For=198.51.100.1;host=auxot.example", "198.51.100.1"),
    ("127.0.0.1", 'for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    # An obfuscated node is no address: the walk stops at the proxy that passed it on.
    ("127.0.0.1", 'for="_hidden", for=10.9.9.9', "10.9.9.9"),
    ("10.2.3.4", 'for=198.51.100.1, for="_hidden", for=10.9.9.9', "10.9.9.9"),
    ("127.0.0.1", "for=unknown", "127.0.0.1"),
    ("127.0.0.1", "proto=https", "127.0.0.1"),  # an element without `for`
    ("127.0.0.1", "for=1.1.1.1;for=198.51.100.1", "127.0.0.1"),  # `for` twice: malformed
    ("127.0.0.1", 'for="10.0.0.1, 9.9.9.9", for=198.51.100.1', "198.51.100.1"),
    ("127.0.0.1", 'for=198.51.100.1, for="1.1.1.1', "127.0.0.1"),  # an open quote: garbage
    ("127.0.0.1", "for=198.51.100.1, garbage", "127.0.0.1"),
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "for=198.51.100.1,,", "127.0.0.1"),
]


@pytest.mark.parametrize(("peer", "forwarded", "expected"), FORWARDED_CASES)
def test_client_ip_reads_forwarded_when_the_proxies_write_it(settings, peer, forwarded,
                                                             expected):
    settings.AUXOT_TRUSTED_PROXIES = PROXIES
    settings.AUXOT_FORWARDED_HEADER = "Forwarded"
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_FORWARDED=forwarded,
                                   HTTP_X_FORWARDED_FOR="192.0.2.66")
    assert client_ip(request) == expected


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
def test_only_the_configured_header_is_read_the_other_is_the_callers_own_say(settings,
                                                                             header):
    """A proxy that writes one header passes the other through as the caller sent it:
    believing both would let any caller choose the address recorded as its own."""
    settings.AUXOT_TRUSTED_PROXIES = PROXIES
    settings.AUXOT_FORWARDED_HEADER = header
    written, forged = "198.51.100.1", "192.0.2.66"
    meta = ({"HTTP_X_FORWARDED_FOR": written, "HTTP_FORWARDED": f"for={forged}"}
            if header == "X-Forwarded-For" else
            {"HTTP_FORWARDED": f"for={written}", "HTTP_X_FORWARDED_FOR": forged})
    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", **meta)
    assert client_ip(request) == written
    only_other = {key: value for key, value in meta.items()
                  if value.endswith(forged)}
    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", **only_other)
    assert client_ip(request) == "127.0.0.1"


@pytest.mark.parametrize(("forwarded", "expected"), [
    ("for=198.51.100.1, for=203.0.113.10", "203.0.113.10"),
    ("for=203.0.113.10;proto=https", "203.0.113.10"),
    ("", "203.0.113.9"),
    ("for=198.51.100.1, for=unknown", "203.0.113.9"),
])
def test_with_a_star_the_forwarded_element_the_proxy_appended_is_read(settings, forwarded,
                                                                      expected):
    settings.AUXOT_TRUSTED_PROXIES = ["*"]
    settings.AUXOT_FORWARDED_HEADER = "Forwarded"
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9", HTTP_FORWARDED=forwarded)
    assert client_ip(request) == expected


@pytest.mark.parametrize("header", [
    '\\"' * 4000,                     # a quote retried from every later quote: quadratic
    '"' + "\\x" * 4000,               # one quote left open
    ",;" * 4000,                        # 4,000 empty elements
    "for=10.0.0.1;" * 600,              # one element, the same pair 600 times
    "for=10.0.0.1, " * 600,             # 600 proxies
])
def test_a_hostile_forwarded_header_is_read_in_one_pass(settings, header):
    """Whatever a header up to gunicorn's 8,190-byte field limit holds, it is parsed once,
    left to right, and never believed past the proxies: the walk ends at the peer or a
    proxy's address. (Timing is in no test; a quadratic regex would show as a hang here.)"""
    settings.AUXOT_TRUSTED_PROXIES = ["10.0.0.0/8", "127.0.0.1"]
    settings.AUXOT_FORWARDED_HEADER = "Forwarded"
    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", HTTP_FORWARDED=header)
    assert client_ip(request) in {"127.0.0.1", "10.0.0.1"}


def test_client_ip_trusts_nobody_when_no_proxy_is_configured(settings):
    settings.AUXOT_TRUSTED_PROXIES = []
    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1",
                                   HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert client_ip(request) == "127.0.0.1"


@pytest.mark.parametrize(("forwarded", "expected"), [
    ("198.51.100.1, 203.0.113.10", "203.0.113.10"),  # the hop the proxy appended, only
    ("198.51.100.1", "198.51.100.1"),
    ("", "203.0.113.9"),
    ("198.51.100.1, garbage", "203.0.113.9"),
])
def test_with_a_star_any_peer_is_the_one_proxy_in_front(settings, forwarded, expected):
    settings.AUXOT_TRUSTED_PROXIES = ["*"]
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9",
                                   HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_a_long_forwarded_chain_is_read_only_as_far_as_a_proxy_chain_goes(settings):
    settings.AUXOT_TRUSTED_PROXIES = ["10.0.0.0/8"]
    chain = ", ".join(["10.0.0.1"] * 10_000)
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=chain)
    assert client_ip(request) == "10.0.0.1"


# One caller, however its address reaches us, is one string in every audit row and budget:
# a dual-stack socket's IPv4-mapped form, ports, brackets, case and IPv6 zones are dropped.
SAME_CALLER = {
    "203.0.113.9": ["203.0.113.9", "::ffff:203.0.113.9", "::FFFF:cb00:7109",
                    "[::ffff:203.0.113.9]:443", "203.0.113.9:4711"],
    "2001:db8::7": ["2001:DB8::7", "2001:db8:0:0::7", "[2001:db8::7]:443", "2001:db8::7%eth0",
                    "2001:db8::7%<script>", "2001:db8::7%" + "x" * 4000],
    "fe80::1": ["fe80::1%eth0", "fe80::1%25eth0", "[fe80::1%eth0]:80"],
}


@pytest.mark.parametrize(("expected", "written"),
                         [(e, w) for e, forms in SAME_CALLER.items() for w in forms])
@pytest.mark.parametrize("path", ["direct", "trusted proxy", "star"])
def test_one_caller_is_one_address_whichever_way_it_arrives(settings, expected, written,
                                                            path):
    settings.AUXOT_TRUSTED_PROXIES = ["*"] if path == "star" else PROXIES
    meta = ({"REMOTE_ADDR": written} if path == "direct" else
            {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": f"10.9.9.9, {written}"})
    request = RequestFactory().get("/", **meta)
    assert client_ip(request) == expected


@pytest.mark.parametrize("trusted", [PROXIES, ["*"], []])
def test_a_peer_that_is_not_an_address_is_no_address(settings, trusted):
    """A unix socket's peer (or anything a server puts there): never stored as an address
    (PostgreSQL's inet refused it: the audited request failed)."""
    settings.AUXOT_TRUSTED_PROXIES = trusted
    request = RequestFactory().get("/", REMOTE_ADDR="unix:/run/auxot.sock",
                                   HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert client_ip(request) is None
    assert peer_ip(request) is None


def test_only_auxot_http_reads_the_peer_or_the_forwarding_headers():
    """Every address the product records or judges comes from auxot.http: no other module
    names REMOTE_ADDR or a forwarding header (X-Forwarded-For, Forwarded, X-Real-IP), in
    META/environ or request.headers spelling."""
    import io
    import tokenize
    from pathlib import Path

    names = {"remote_addr", "http_x_forwarded_for", "x-forwarded-for", "http_forwarded",
             "forwarded", "http_x_real_ip", "x-real-ip"}
    root = Path(__file__).resolve().parents[2]
    readers = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if parts[0] == "tests" or any(p.startswith(".") or p == "node_modules" for p in parts):
            continue
        if parts == ("auxot", "singleheaders.py"):
            continue  # names every header the code reads to classify it, reads none
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.line.startswith("FORWARDED_HEADERS = "):
                continue  # settings.py: the header names a setting may choose, not a read
            if token.type == tokenize.STRING and token.string.strip("\"'rbRB").lower() in names:
                readers.add(str(path.relative_to(root)))
    assert readers == {"auxot/http.py"}


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0),
    (" 7 ", 7.0),
    ("Mon, 30 Nov 2026 12:00:30 GMT", 30.0),
    ("Mon, 30 Nov 2026 11:00:00 GMT", 0.0),  # a date in the past: at once
    ("", None),
    (None, None),
    ("soon", None),
    ("-5", None),
])
def test_retry_after_reads_seconds_and_http_dates(value, expected):
    assert retry_after_seconds(value, now=NOW) == expected


# What a called server may put in the header: every one gives a finite delay or None, never
# an exception (a receiver must not make its own answer unrecordable).
HOSTILE = ["²", "³", "¹", "١٢", "\uff11\uff12", "½", "9" * 31, "9" * 400, "99999999999999", "1e3",
           "5.5", "NaN", "inf", "-0", "0x10", "+5", "5 5", "\x00", "\u2028", "5\r\nX: y",
           "Mon, 31 Dec 9999 23:59:59 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 99 Nov 1994",
           "Mon, 30 Nov 2026 12:00:30 GMT garbage", "\udcff", "9" * 10_000]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("cap", [None, 3600.0])
def test_retry_after_never_raises_and_never_gives_an_unusable_delay(value, cap):
    from datetime import timedelta

    seconds = retry_after_seconds(value, now=NOW, cap=cap)
    assert seconds is None or 0 <= seconds <= (cap or 100 * 365 * 86400)
    if seconds is not None:
        assert NOW + timedelta(seconds=seconds) >= NOW  # usable as a schedule


@pytest.mark.parametrize(("value", "expected"), [("²", None), ("١٢", None), ("\uff11\uff12", None),
                                                 ("99999999999999", None), ("0042", 42.0)])
def test_retry_after_takes_ascii_digits_only(value, expected):
    assert retry_after_seconds(value, now=NOW) == expected


def test_retry_after_is_capped_when_asked():
    assert retry_after_seconds("86400", now=NOW, cap=3600) == 3600


@pytest.mark.django_db
def test_task_enqueue_puts_one_message_on_the_broker():
    from django_q.models import OrmQ

    from auxot.broker import task_enqueue

    before = OrmQ.objects.count()
    assert task_enqueue(task="auxot.broker.broker_get", arg="x", name="probe") is True
    assert OrmQ.objects.count() == before + 1


def test_task_enqueue_never_raises_when_the_broker_fails(monkeypatch, caplog):
    import django_q.tasks

    from auxot.broker import task_enqueue

    def broken(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(django_q.tasks, "async_task", broken)
    assert task_enqueue(task="t", arg="1", name="work-1") is False
    assert "enqueue of work-1 failed" in caplog.text
