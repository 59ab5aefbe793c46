"""gunicorn's threaded worker, answering the requests it refuses before Django sees them
the way the application answers everything else: `application/problem+json`.

gunicorn parses the request line and headers itself. What it refuses there (a request line
over `limit_request_line`, more or larger headers than its limits, a line or header that is
not HTTP) it answered with an HTML page of its own, `400` even for an over-long URI: the one
answer of the API a client could not parse as a problem. This worker answers those as
problems, with the status HTTP has for each (414 URI Too Long, 431 Request Header Fields Too
Large, 417 for an `Expect` other than `100-continue`, 501 for an unknown transfer coding,
else 400), and logs one line naming the kind of error, never the text it was given. It also
refuses, as `400 invalid_request` naming the field, a request that sends a header read as one
value more than once (auxot/singleheaders.py): gunicorn would join the two with a comma, and
a joined value cannot be told from one with a comma of its own. Every other error (a
proxy-protocol or TLS refusal, an unexpected exception) is gunicorn's own handling, unchanged.

On a graceful stop (SIGTERM) it closes its listening sockets at once, as gunicorn did before
27: a new connection is then refused (a load balancer or client retries it elsewhere) instead
of waiting in the kernel's backlog for a worker that will never accept it, while requests in
flight still finish.

gunicorn.conf.py selects it (`worker_class`); it is a `gthread` worker in every other way.
"""

from datetime import datetime

from gunicorn.http import errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.util import write_nonblock
from gunicorn.workers.gthread import ThreadWorker

from auxot.singleheaders import canonical, cookie_joined, repeated_detail, repeated_header

# auxot.errors is imported when an answer is written, not here: gunicorn's arbiter imports
# this module before any worker has loaded the application (and so Django's settings).

# The refusals of gunicorn's parser this worker answers, and how: (code, detail).
REFUSED: tuple[tuple[type[Exception], str, str], ...] = (
    (errors.LimitRequestLine, "uri_too_long",
     "The request line (method, path and query string) is longer than this server reads."),
    (errors.LimitRequestHeaders, "headers_too_large",
     "The request has more header fields, or a larger one, than this server reads."),
    (errors.InvalidRequestLine, "invalid_request", "The request line is not HTTP."),
    (errors.InvalidRequestMethod, "invalid_request", "The request method is not valid."),
    (errors.InvalidHTTPVersion, "invalid_request", "The HTTP version is not supported."),
    (errors.InvalidHeaderName, "invalid_request", "A header field name is not valid."),
    (errors.InvalidHeader, "invalid_request", "A header field is not valid."),
    (errors.ObsoleteFolding, "invalid_request", "A header field is folded over two lines."),
    (errors.InvalidSchemeHeaders, "invalid_request",
     "The forwarded scheme headers contradict each other."),
    (errors.ExpectationFailed, "expectation_failed",
     "The Expect header asks for something other than 100-continue."),
    (errors.UnsupportedTransferCoding, "transfer_coding_unsupported",
     "The Transfer-Encoding names a coding this server does not implement."),
    (errors.InvalidChunkSize, "invalid_request", "A chunk of the chunked body is malformed."),
    (errors.ChunkMissingTerminator, "invalid_request",
     "A chunk of the chunked body is malformed."),
    (errors.InvalidChunkExtension, "invalid_request",
     "A chunk of the chunked body is malformed."),
    (errors.InvalidH2CPreface, "invalid_request", "The HTTP/2 preface is not valid."),
    (errors.ConfigurationProblem, "not_found", "The path is outside this server's SCRIPT_NAME."),
)
# The rest of gunicorn's parse errors, left to gunicorn, each with the reason
# (tests/intakes/test_bad_input_wall.py checks that every one is here or in REFUSED).
LEFT_TO_GUNICORN: dict[str, str] = {
    "InvalidProxyLine": "PROXY protocol is off (proxy_protocol)",
    "InvalidProxyHeader": "PROXY protocol is off (proxy_protocol)",
    "ForbiddenProxyRequest": "PROXY protocol is off (proxy_protocol)",
    # The application's own response header gunicorn would not send: a 500, not the client's
    # fault (subclasses of InvalidHeader/InvalidHeaderName, so refusal() tells them apart).
    "InvalidResponseHeader": "the application's error: gunicorn answers 500",
    "InvalidResponseHeaderName": "the application's error: gunicorn answers 500",
}
_APPLICATIONS_OWN = (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName)
# The fields gunicorn's parser itself refuses twice (RFC 9110 5.3), while it reads them: it
# raises InvalidHeader naming the field with the request attached (a bad value's
# InvalidHeader has no request; a bad Content-Length's has, but names CONTENT-LENGTH).
_GUNICORNS_SINGLETONS = frozenset({"HOST", "CONTENT-TYPE"})


class RepeatedHeader(errors.ParseException):
    """A header read as one value was sent more than once (auxot/singleheaders.py)."""

    def __init__(self, name: str, req=None):
        self.hdr, self.req = name, req

    def __str__(self):
        return f"Repeated header: {self.hdr}"


def refusal(exc: BaseException) -> tuple[str, str] | None:
    """(problem code, detail) for a request gunicorn's parser refused, or None."""
    if isinstance(exc, _APPLICATIONS_OWN):
        return None
    if isinstance(exc, RepeatedHeader):
        return "invalid_request", repeated_detail(exc.hdr)
    if isinstance(exc, errors.InvalidHeader) and (req := getattr(exc, "req", None)) is not None:
        if exc.hdr in _GUNICORNS_SINGLETONS:
            return "invalid_request", repeated_detail(canonical(exc.hdr))
        # Two Content-Lengths: refused once the fields are parsed, so they are there to see.
        if (name := repeated_header(name for name, _ in req.headers or ())) is not None:
            return "invalid_request", repeated_detail(name)
    for kind, code, detail in REFUSED:
        if isinstance(exc, kind):
            return code, detail
    return None


def refusal_bytes(code: str, detail: str) -> bytes:
    """The whole HTTP answer: a problem, and the connection closed (the rest of what the
    client sent cannot be read as requests)."""
    from auxot.errors import PROBLEM_CONTENT_TYPE, PROBLEMS, problem_json

    status, title = PROBLEMS[code]
    body = problem_json(code, detail)
    head = (f"HTTP/1.1 {status} {title}\r\nConnection: close\r\n"
            f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ProblemThreadWorker(ThreadWorker):
    def handle_request(self, req, conn):
        # gunicorn's list of fields, before wsgi.create joins the repeated ones.
        if (name := repeated_header(name for name, _ in req.headers)) is not None:
            raise RepeatedHeader(name, req)  # answered by handle_error, connection closed
        cookies = [value for name, value in req.headers if name == "COOKIE"]
        if len(cookies) > 1:  # one field, joined with "; " (RFC 9113 8.2.3), not a comma
            req.headers = [*((name, value) for name, value in req.headers if name != "COOKIE"),
                           ("COOKIE", cookie_joined(cookies))]
        return super().handle_request(req, conn)

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # stopping: refuse new connections from now on
            for listener in self.sockets:
                listener.close()

    def handle_error(self, req, client, addr, exc):
        answer = refusal(exc)
        if answer is None:
            return super().handle_error(req, client, addr, exc)
        from auxot.errors import PROBLEMS

        code, detail = answer
        started = datetime.now()
        addr = addr or ("", -1)  # a unix socket's peer
        # The kind, not str(exc): that holds what the client sent (a header, a path).
        self.log.warning("Invalid request from ip=%s: %s (%s)", addr[0], type(exc).__name__,
                         code)
        if req is None and isinstance(exc, (errors.InvalidHeader, errors.InvalidHeaderName,
                                            RepeatedHeader)):
            req = getattr(exc, "req", None)  # as gunicorn does, for the access log
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
            response = Response(req, client, self.cfg)
            response.status = f"{PROBLEMS[code][0]} {PROBLEMS[code][1]}"
            self.log.access(response, req, environ, datetime.now() - started)
        try:
            write_nonblock(client, refusal_bytes(code, detail))
        except Exception:  # the client went away: nothing to answer
            self.log.debug("Failed to send error message.")
