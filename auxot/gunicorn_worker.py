"""gunicorn's threaded worker, answering the requests it refuses before Django sees them
the way the application answers everything else: `application/problem+json`.

gunicorn parses the request line and headers itself. What it refuses there (a request line
over `limit_request_line`, more or larger headers than its limits, a line or header that is
not HTTP) it answered with an HTML page of its own, `400` even for an over-long URI: the one
answer of the API a client could not parse as a problem. This worker answers those as
problems, with the status HTTP has for each (414 URI Too Long, 431 Request Header Fields Too
Large, else 400), and logs one line naming the kind of error, never the text it was given.
Every other error (a proxy-protocol or TLS refusal, an unexpected exception) is gunicorn's
own handling, unchanged.

gunicorn.conf.py selects it (`worker_class`); it is a `gthread` worker in every other way.
"""

from datetime import datetime

from gunicorn.http import errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.util import write_nonblock
from gunicorn.workers.gthread import ThreadWorker

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
)


def refusal(exc: BaseException) -> tuple[str, str] | None:
    """(problem code, detail) for a request gunicorn's parser refused, or None."""
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
        if req is None and isinstance(exc, (errors.InvalidHeader, errors.InvalidHeaderName)):
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
