"""Auxot's Python client: trigger an intake, wait for the work item, verify a callback.

It imports `requests` and the standard library only, never Django, so it works from any
CI image after `pip install auxot-client`:

    from auxot_client import Client
    client = Client()                      # AUXOT_BASE_URL and AUXOT_API_KEY
    work = client.trigger(INTAKE_ID, {"ticket_id": "SUP-1042"})
    item = client.wait(INTAKE_ID, work["work_id"], timeout=1800)
    item["status"]                         # "completed" or "failed"

`wait` never hammers the server: exponential backoff with full jitter, never sooner than
the server's `Retry-After`, and a long-poll (`?wait=`) when the server offers one.
"""

from __future__ import annotations

import binascii
import json
import os
import random
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3

from auxot_client._version import VERSION

ENV_BASE_URL = "AUXOT_BASE_URL"
ENV_API_KEY = "AUXOT_API_KEY"
TERMINAL = frozenset({"completed", "failed"})
_KEY_RE = re.compile(r"^(user|team)\.[a-z2-7]{12}\.[A-Za-z0-9_-]{43}[0-9a-f]{6}$")
_TRANSIENT_STATUSES = {429, 500, 502, 503, 504}
USER_AGENT = f"auxot-client/{VERSION}"
# The largest answer read (a poll carries the item's input, output and error, each bounded
# by the server; a larger answer is not Auxot's, and is not read into memory whole).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# How long a trigger (or replay) keeps retrying, all attempts together: a server restarting
# meanwhile (10-30 s) does not fail the caller's job.
TRIGGER_RETRY_FOR = 60.0


class AuxotError(Exception):
    """Anything that went wrong talking to Auxot. `problem` is the problem+json body."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 problem: dict | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.problem = problem or {}
        self.retry_after = retry_after
        self.idempotency_key: str | None = None  # a trigger's or replay's, when it gave up


class ConfigError(AuxotError):
    """Missing or malformed AUXOT_BASE_URL / AUXOT_API_KEY."""


class AuthError(AuxotError):
    """401: the key is missing, malformed, unknown, revoked or expired."""


class NotFoundError(AuxotError):
    """404: no such intake or work item for this key (or the intake is deactivated)."""


class RequestError(AuxotError):
    """Another 4xx: the request itself is wrong; retrying will not help."""


class TransientError(AuxotError):
    """429, 5xx or a network failure: retrying later may help."""


class WaitTimeout(AuxotError):
    """The work item was not terminal in time. `last` is the last poll body seen."""

    def __init__(self, message: str, *, last: dict | None,
                 last_error: AuxotError | None = None):
        super().__init__(message)
        self.last = last
        self.last_error = last_error  # the transient error of the last poll, if it failed


class CallbackVerificationError(AuxotError):
    """The callback's signature, timestamp or headers do not verify."""


@dataclass
class Poll:
    body: dict
    retry_after: float | None
    wait_max: int | None  # the server's long-poll cap (None: it does not offer one)
    # The item's state as the server names it (`Auxot-State`): a long-poll given it back
    # answers as soon as the state is another. None: the server does not offer that.
    state: str | None = None
    refused: bool = False  # a long-poll the server did not hold (`Auxot-Wait-Refused`)

    @property
    def status(self) -> str:
        return self.body.get("status", "")


@dataclass
class Backoff:
    """Exponential backoff with full jitter, never sooner than the server asked."""

    base: float = 1.0
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 16))
        self.attempt += 1
        return max(self.rng.uniform(0, ceiling), retry_after or 0.0)

    def reset(self) -> None:
        self.attempt = 0


def _retry_after(response: requests.Response) -> float | None:
    raw = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _error(response: requests.Response) -> AuxotError:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    status = response.status_code
    detail = problem.get("detail") or response.reason or "error"
    message = f"HTTP {status}: {detail}"
    kwargs = {"status": status, "code": problem.get("code"), "problem": problem,
              "retry_after": _retry_after(response)}
    if status == 401:
        return AuthError(message, **kwargs)
    if status == 404:
        return NotFoundError(message, **kwargs)
    if status in _TRANSIENT_STATUSES:
        return TransientError(message, **kwargs)
    return RequestError(message, **kwargs)


def _unsendable(exc: requests.RequestException, base_url: str) -> RequestError:
    """A request `requests` refused to send: retrying cannot help, so a usage error, not a
    network one. Never its message: it quotes the offending header's value."""
    if isinstance(exc, requests.exceptions.InvalidHeader):
        what = ("a header value is not valid (a line break, or a leading space or tab: check "
                "--correlation-id, --idempotency-key and --callback-url)")
    else:
        what = (f"{base_url} with this path is not a valid URL (check {ENV_BASE_URL} and the "
                "ids)")
    return RequestError(f"cannot send the request: {what}")


def _network_reason(exc: requests.RequestException) -> str:
    """Which way the connection failed, in words a CI log reader can act on, then the
    exception's name: refused (nothing listens: wrong port, server down), the name not
    found (DNS: a typo in AUXOT_BASE_URL), TLS (a certificate), a timeout."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    if isinstance(exc, requests.exceptions.SSLError):
        words = "TLS failed (the server's certificate?)"
    elif isinstance(reason, urllib3.exceptions.NameResolutionError):
        words = "the host name was not found (DNS; check AUXOT_BASE_URL)"
    elif isinstance(exc, requests.exceptions.ConnectTimeout):
        words = "connecting timed out"
    elif isinstance(exc, requests.exceptions.ReadTimeout):
        words = "no answer in time"
    elif isinstance(reason, urllib3.exceptions.NewConnectionError) and (
            "refused" in str(reason).lower()):
        words = "connection refused (nothing listens there: the port, or the server down?)"
    else:
        return type(exc).__name__
    return f"{words} ({type(exc).__name__})"


def _path(*parts: str) -> str:
    """/v1/ and the parts, each one path segment: an id with `/`, `..`, `?` or `#` in it
    (a paste gone wrong) cannot reach another path of the server."""
    return "/v1/" + "/".join(urllib.parse.quote(str(part), safe="") for part in parts)


def _api_path_removed(base_url: str) -> str:
    """The URL up to its first /v1 path segment (all of it when there is none)."""
    parts = urllib.parse.urlsplit(base_url)
    segments = parts.path.split("/")
    if "v1" not in segments:
        return base_url
    path = "/".join(segments[:segments.index("v1")])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, session: requests.Session | None = None,
                 max_answer_bytes: int | None = None):
        base_url = (base_url or os.environ.get(ENV_BASE_URL, "")).strip().rstrip("/")
        api_key = (api_key or os.environ.get(ENV_API_KEY, "")).strip()
        if "@" in urllib.parse.urlsplit(base_url).netloc:
            # Never echo it: the part before the @ is a password. requests would also send it
            # as Basic auth in place of the key.
            raise ConfigError(f"{ENV_BASE_URL} has a user or password in it (user:pass@); "
                              "Auxot takes only the API key: remove them.")
        if not re.match(r"^https?://[^/]+", base_url):
            raise ConfigError(f"Set {ENV_BASE_URL} to your Auxot URL, e.g. "
                              "https://auxot.example.com (got "
                              f"{base_url or 'nothing'}).")
        root = _api_path_removed(base_url)
        if root != base_url:  # pasted from /v1/docs or an intake's URL: every call would 404
            raise ConfigError(f"{ENV_BASE_URL} is the server's root, without /v1 (the client "
                              f"adds /v1/… itself): e.g. {root}")
        if not api_key:
            raise ConfigError(f"Set {ENV_API_KEY} to a user.… or team.… API key.")
        if not _KEY_RE.match(api_key):
            # Never echo the key: it may be a real secret with a typo.
            raise ConfigError(f"{ENV_API_KEY} is not an Auxot key: keys look like "
                              "user.<12>.<49> or team.<12>.<49> (check for quotes, spaces, "
                              "a truncated copy).")
        self.base_url = base_url
        self._api_key = api_key
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes or MAX_ANSWER_BYTES
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r}, api_key='{self._api_key[:5]}…')"

    def _request(self, method: str, path: str, *, timeout: float | None = None,
                 **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json",
                   "User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
        try:
            # No redirects: one would re-send the payload (and, to the same host, the key) to
            # wherever the answer points. Auxot never redirects its API.
            response = self.session.request(method, f"{self.base_url}{path}", headers=headers,
                                            timeout=timeout or self.timeout,
                                            allow_redirects=False, stream=True, **kwargs)
            self._read(response, timeout or self.timeout)
        except requests.RequestException as exc:
            if isinstance(exc, ValueError):  # InvalidURL, InvalidHeader, ...: nothing was sent
                raise _unsendable(exc, self.base_url) from None
            raise TransientError(f"Cannot reach {self.base_url}: {_network_reason(exc)}"
                                 ) from None
        if response.status_code >= 400:
            raise _error(response)
        if 300 <= response.status_code < 400:
            raise RequestError(
                f"HTTP {response.status_code}: {self.base_url} redirects (to "
                f"{response.headers.get('Location', '?')[:200]}); set {ENV_BASE_URL} to the "
                "URL it should be (https?)", status=response.status_code)
        return response

    def _read(self, response: requests.Response, seconds: float) -> None:
        """Read the answer's body, at most max_answer_bytes (decoded) within `seconds`: the
        socket timeout bounds each read, not a server that drips bytes for ever. Reads
        return what has arrived (urllib3 2's read1), so the deadline is checked as it
        drips; with urllib3 1.26, after each 8 KiB."""
        deadline = time.monotonic() + seconds
        body = bytearray()
        read1 = getattr(response.raw, "read1", None)
        chunks = (iter(lambda: read1(64 * 1024, decode_content=True), b"") if read1
                  else response.iter_content(8 * 1024))
        try:
            for chunk in chunks:
                body += chunk
                if len(body) > self.max_answer_bytes:
                    raise RequestError(
                        f"HTTP {response.status_code}: the answer from {self.base_url} is "
                        f"larger than {self.max_answer_bytes:,} bytes; it is not an Auxot "
                        f"answer (is {ENV_BASE_URL} right?)", status=response.status_code)
                if time.monotonic() > deadline:
                    raise TransientError(f"{self.base_url} took more than {seconds:g} s to "
                                         "send its answer")  # as a network error: no status
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(exc) from None  # as requests would have said
        finally:
            response.close()
        response._content = bytes(body)  # what .json() and .text read from here on

    def _answer(self, response: requests.Response, *required: str) -> dict:
        """The answer's JSON object, with `required` keys; RequestError if it is not one
        (a proxy's HTML page, or not Auxot at all)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or any(not isinstance(body.get(key), str)
                                             for key in required):
            raise RequestError(
                f"HTTP {response.status_code}: the answer from {self.base_url} is not an Auxot "
                f"answer (expected a JSON object with {', '.join(required)} as text); is "
                f"{ENV_BASE_URL} right?", status=response.status_code)
        return body

    def trigger(self, intake_id: str, data: Any, *, correlation_id: str | None = None,
                idempotency_key: str | None = None, callback_url: str | None = None,
                attempts: int = 8, retry_for: float = TRIGGER_RETRY_FOR,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> dict:
        """POST the JSON `data`; return the 202 body (`work_id`, `status_url`, ...).

        Every trigger carries an `Idempotency-Key` (yours, or a fresh random one), the same
        on each of its retries, so retrying cannot create a second item: 429, 5xx, network
        errors and 409 idempotency_in_flight are retried, never sooner than Retry-After,
        for at most `retry_for` seconds in all (60: a server restarting meanwhile) and
        `attempts` requests; no request outlives that time either. A TransientError that
        ends the retries carries the key as `.idempotency_key`: trigger again with it to get
        the same work item if the first was accepted.
        """
        optional = {"Auxot-Correlation-Id": correlation_id,
                    "Auxot-Callback-Url": callback_url}
        return self._post_accepted(_path("intake", intake_id), data, optional,
                                   idempotency_key, attempts, retry_for, sleep, clock)

    def replay(self, intake_id: str, work_id: str, *, start_over: bool = False,
               reason: str = "", idempotency_key: str | None = None, attempts: int = 8,
               retry_for: float = TRIGGER_RETRY_FOR,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> dict:
        """Replay a failed work item: a NEW item resumes from the failed step (or, with
        `start_over`, runs every step again). Returns the 202 body of the new item.
        `reason` (why, at most 500 characters) is kept in the audit log.

        The original stays failed. Retried like `trigger`, under one `Idempotency-Key`
        (yours or a random one): a retry gets the first replay's answer, never a 409."""
        body = {"from": "start" if start_over else "failed_step"}
        if reason:
            body["reason"] = reason
        return self._post_accepted(_path("intake", intake_id, "work", work_id, "replay"),
                                   body, {},
                                   idempotency_key, attempts, retry_for, sleep, clock)

    def _post_accepted(self, path: str, data: Any, optional: dict, idempotency_key: str | None,
                       attempts: int, retry_for: float, sleep: Callable[[float], None],
                       clock: Callable[[], float]) -> dict:
        idempotency_key = idempotency_key or f"auxot-client-{uuid.uuid4()}"
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        headers.update({k: v for k, v in optional.items() if v})
        body = json.dumps(data).encode()
        backoff = Backoff()
        deadline = clock() + retry_for
        for attempt in range(1, attempts + 1):
            try:
                # A hung server cannot hold one request past the time the retries have.
                timeout = max(0.5, min(self.timeout, deadline - clock()))
                return self._answer(self._request("POST", path, data=body, headers=headers,
                                                  timeout=timeout), "work_id", "status_url")
            except (TransientError, RequestError) as exc:
                in_flight = exc.status == 409 and exc.code == "idempotency_in_flight"
                retryable = (isinstance(exc, TransientError) or in_flight) and attempt < attempts
                pause = backoff.delay(exc.retry_after) if retryable else 0.0
                if not retryable or clock() + pause >= deadline:  # none sooner than asked
                    exc.idempotency_key = idempotency_key
                    raise
                sleep(pause)
        raise AssertionError("unreachable")

    def get(self, intake_id: str, work_id: str, *, wait: float | None = None,
            timeout: float | None = None, state: str | None = None) -> Poll:
        """One poll; with `wait`, the server answers when the item finishes or after `wait` s,
        and with `state` too (a Poll's `state`) as soon as its state is another.
        `timeout` bounds the request (default: the client's timeout plus `wait`)."""
        params = {"wait": f"{wait:g}"} if wait else None
        if params and state:
            params["state"] = state
        response = self._request("GET", _path("intake", intake_id, "work", work_id), params=params,
                                 timeout=timeout or self.timeout + (wait or 0))
        wait_max = response.headers.get("Auxot-Wait-Max", "")
        return Poll(body=self._answer(response, "status"),
                    retry_after=_retry_after(response),
                    wait_max=int(wait_max) if wait_max.isdigit() else None,
                    state=response.headers.get("Auxot-State") or None,
                    refused=bool(response.headers.get("Auxot-Wait-Refused")))

    def wait(self, intake_id: str, work_id: str, *, timeout: float = 1800.0,
             on_poll: Callable[[Poll], None] | None = None, long_poll: bool = True,
             max_wait: float | None = None, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> dict:
        """Poll until the item is terminal; return its body. Raises WaitTimeout, AuthError,
        NotFoundError, RequestError. Transient errors are retried until the timeout.

        A server that names the item's state (`Auxot-State`) is given it back with each
        long-poll, and answers as soon as what the poll shows changes (status, step, wait,
        who holds the item, a decision, a provider line's place): `on_poll` sees each change
        within a moment, at one request per change. `max_wait` shortens each
        long-poll, for an older server that answers only when the item finishes."""
        deadline = clock() + timeout
        backoff, wait_max, last, last_status, last_error = Backoff(), None, None, None, None
        state = None
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                because = f" (the last poll failed: {last_error})" if last_error else ""
                raise WaitTimeout(f"work item {work_id} not finished after {timeout:g} s"
                                  f"{because}", last=last, last_error=last_error)
            want = int(min(wait_max, remaining, max_wait or wait_max)) if (
                long_poll and wait_max) else 0
            started, sent = clock(), state
            try:
                # A poll never outlives the deadline: a hung server cannot stretch
                # `timeout` by the client's request timeout.
                poll = self.get(intake_id, work_id, wait=want or None, state=state,
                                timeout=max(0.5, min(self.timeout + want, remaining)))
            except TransientError as exc:
                last_error = exc
                sleep(min(backoff.delay(exc.retry_after), max(0.0, deadline - clock())))
                continue
            except RequestError as exc:
                if want and exc.code == "invalid_request":
                    long_poll = False  # the server refused our wait: plain polling
                    continue
                raise
            last, last_error, state = poll.body, None, poll.state
            if poll.status != last_status:
                backoff.reset()
                last_status = poll.status
            if on_poll:
                on_poll(poll)
            if poll.status in TERMINAL:
                return poll.body
            wait_max = poll.wait_max
            if want and not poll.refused and (clock() - started >= want * 0.9 or (
                    state is not None and state != sent)):
                # The server held the request for us, or answered a change: ask again
                # right away (with the new state it waits for the next change).
                continue
            if not want and long_poll and wait_max and state and not poll.refused:
                continue  # a first plain poll: the long-poll answers the next change
            sleep(min(backoff.delay(poll.retry_after), max(0.0, deadline - clock())))

    def run(self, intake_id: str, data: Any, *, timeout: float = 1800.0,
            on_poll: Callable[[Poll], None] | None = None,
            clock: Callable[[], float] = time.monotonic, **trigger_options: Any) -> dict:
        """Trigger and wait, both within `timeout`: the finished work item's body."""
        deadline = clock() + timeout
        trigger_options.setdefault("retry_for", min(timeout, TRIGGER_RETRY_FOR))
        work = self.trigger(intake_id, data, clock=clock, **trigger_options)
        return self.wait(intake_id, work["work_id"], timeout=max(1.0, deadline - clock()),
                         on_poll=on_poll, clock=clock)


# --- callbacks -----------------------------------------------------------------------------
def callback_verify(*, secret: str, headers: dict[str, str], body: bytes | str) -> Any:
    """Verify a received callback (Standard Webhooks) and return its parsed JSON body.

    `headers` must carry webhook-id, webhook-timestamp (within 5 minutes of now) and
    webhook-signature; `body` must be the exact bytes received. Raises
    CallbackVerificationError; ConfigError without the `callbacks` extra.
    """
    try:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError
    except ImportError:
        raise ConfigError("verifying callbacks needs the Standard Webhooks verifier: "
                          "pip install 'auxot-client[callbacks]'") from None

    try:
        return Webhook(secret).verify(body, headers)
    except (WebhookVerificationError, ValueError, binascii.Error) as exc:
        raise CallbackVerificationError(f"callback does not verify: {exc or 'bad signature'}") \
            from None
    except Exception as exc:  # the library raises others for an empty or malformed secret
        raise CallbackVerificationError(f"cannot verify: {type(exc).__name__}") from None


def http_request_parse(raw: bytes) -> tuple[dict[str, str], bytes]:
    """Split a raw HTTP request (optional request line, headers, blank line, body).

    The body is every byte after the blank line, or the first Content-Length bytes of it.
    """
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = raw.partition(separator)
        if found:
            break
    else:
        raise CallbackVerificationError("no blank line between the headers and the body")
    headers: dict[str, str] = {}
    for number, line in enumerate(head.decode("latin-1").splitlines()):
        if number == 0 and not re.match(r"^[A-Za-z0-9-]+:", line):
            continue  # "POST /hooks/auxot HTTP/1.1"
        name, colon, value = line.partition(":")
        if not colon:
            raise CallbackVerificationError(f"not a header line: {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) <= len(body):
        body = body[:int(length)]  # a saved request may end with an extra newline
    return headers, body


def duration_parse(text: str) -> float:
    """'90', '90s', '30m', '1h30m', '2h' -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 1h30m)")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)
