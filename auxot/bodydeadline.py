"""A deadline on reading the request body, so a slow sender cannot keep a server thread.

gunicorn has no body timeout: a client that sends one byte every few seconds holds a gthread
thread for as long as it likes. This WSGI middleware reads the body up front (at most
AUXOT_MAX_BODY_BYTES + 1 bytes; a larger declared body is refused with 413 unread) and
hands the app an in-memory copy. One watchdog thread per process shuts the socket's read side when
a request's AUXOT_BODY_READ_TIMEOUT_SECONDS run out: the blocked read returns at once, the
caller gets `408 request_timeout` and the connection is closed after the answer.

Only servers that expose the socket (`gunicorn.socket`) are covered; the development server
is not. It is a backstop: production puts a buffering proxy in front (see the README).
"""

import contextlib
import heapq
import io
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

from django.conf import settings

from auxot.errors import PROBLEM_CONTENT_TYPE, problem_json

logger = logging.getLogger(__name__)


class _Deadline:
    __slots__ = ("at", "done", "expired", "sock")

    def __init__(self, at: float, sock: socket.socket):
        self.at, self.sock, self.expired, self.done = at, sock, False, False


class _Watchdog:
    """Shuts the read side of sockets whose body deadline passed (one thread, a heap)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float) -> _Deadline:
        deadline = _Deadline(time.monotonic() + seconds, sock)
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="auxot-body-deadline",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return deadline

    def release(self, deadline: _Deadline) -> None:
        with self._cond:
            deadline.done = True  # the entry leaves the heap when its time comes

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and (self._heap[0][2].done
                                      or self._heap[0][0] <= time.monotonic()):
                    _, _, deadline = heapq.heappop(self._heap)
                    if not deadline.done:
                        deadline.expired = True
                        _shut_read_side(deadline.sock)
                self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)


def _shut_read_side(sock: socket.socket) -> None:
    # A blocked recv() returns b"" at once; gunicorn then finds no next request and closes.
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RD)


_watchdog = _Watchdog()


class BodyReadDeadline:
    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if sock is not None and _declared_too_large(environ):
            # After any answer gunicorn reads the rest of the declared body, with no timeout:
            # a client that declares a huge body and sends it a byte at a time would keep
            # the thread (any path, no key needed). Refuse it unread, and stop reading.
            _shut_read_side(sock)
            return _too_large(start_response)
        want = _bytes_to_read(environ)
        if sock is None or want is None:
            return self.app(environ, start_response)
        deadline = _watchdog.watch(sock, settings.AUXOT_BODY_READ_TIMEOUT_SECONDS)
        try:
            body = _read(environ["wsgi.input"], want)
        except Exception:
            if not deadline.expired:
                raise
        finally:
            _watchdog.release(deadline)
        if deadline.expired:
            logger.info("request body not received within %ss",
                        settings.AUXOT_BODY_READ_TIMEOUT_SECONDS)
            return _timeout(start_response)
        if len(body) >= want and want > settings.AUXOT_MAX_BODY_BYTES:
            # A chunked body past the limit: the app answers 413 from what was read; what is
            # left is not read at all (gunicorn would, with no timeout).
            _shut_read_side(sock)
        environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)


def _declared_too_large(environ: dict) -> bool:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0) > settings.AUXOT_MAX_BODY_BYTES
    except ValueError:
        return False  # the app answers 400


def _bytes_to_read(environ: dict) -> int | None:
    """How much to read up front, or None to leave the body to the app."""
    limit = settings.AUXOT_MAX_BODY_BYTES
    raw = environ.get("CONTENT_LENGTH") or ""
    if raw:
        try:
            length = int(raw)
        except ValueError:
            return None  # the app answers 400
        return length if 0 < length <= limit else None
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return limit + 1 if chunked and environ.get("wsgi.input_terminated") else None


def _read(stream, want: int) -> bytes:
    chunks, got = [], 0
    while got < want:
        chunk = stream.read(min(65536, want - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _too_large(start_response: Callable) -> list[bytes]:
    body = problem_json("payload_too_large",
                        f"The body is larger than {settings.AUXOT_MAX_BODY_BYTES} bytes.")
    start_response("413 Content Too Large", [("Content-Type", PROBLEM_CONTENT_TYPE),
                                              ("Content-Length", str(len(body)))])
    return [body]


def _timeout(start_response: Callable) -> list[bytes]:
    seconds = settings.AUXOT_BODY_READ_TIMEOUT_SECONDS
    body = problem_json(
        "request_timeout",
        f"The request body did not arrive within {seconds:g} seconds; send it at once "
        "(through a buffering proxy) and retry.")
    start_response("408 Request Timeout", [("Content-Type", PROBLEM_CONTENT_TYPE),
                                           ("Content-Length", str(len(body)))])
    return [body]
