"""Request headers the application reads as one value: sent twice, the request is refused.

Every server in front of the application (gunicorn, runserver, the metrics exporter's
wsgiref) joins a header field sent more than once into one environ value with a comma. For a
field that is a list (`Accept`, `X-Forwarded-For`) that is what HTTP means; for one read as a
single value it is not: `Idempotency-Key: a` and `Idempotency-Key: b` became the key `a,b`
(a valid key), a second `Authorization` (a proxy's) changed the credential, a second
`Auxot-Callback-Url` the URL. Once joined, a comma of the caller's cannot be told from the
server's, so the check is made where the server still has its list of fields: the gunicorn
worker (auxot/gunicorn_worker.py) and the wsgiref handlers (`SingleValuedHeadersHandler`).

The answer is `400 invalid_request` naming the field, never its values.
tests/auxot/test_single_valued_headers.py finds every header the code reads, and every
header the framework reads for the admin (Django's middleware in settings.MIDDLEWARE, its
request's host, scheme and cookies, whitenoise's static files), and checks each is
classified here.

`Cookie` is neither: HTTP/2 lets a client or proxy split it into one field per cookie
(RFC 9113 8.2.3), to be joined again with "; " for HTTP/1.1, so several fields are no
error; joined with the servers' comma, though, the admin's session cookie ran into the next
one's ("sessionid=…,csrftoken=…") and the person was signed out. The same servers join
several `Cookie` fields with "; " instead (`cookie_joined`).

Imports nothing of Django at module level: gunicorn's arbiter imports the worker (and so
this) before any application is loaded.
"""

# Read as one value: a second occurrence is refused (lower-case names).
SINGLE_VALUED: frozenset[str] = frozenset({
    "authorization",  # the API key, the metrics token
    # The admin's CSRF check (Django's CsrfViewMiddleware): each one value (RFC 9110 10.1.3,
    # RFC 6454 7); joined, a second one could stand in for the first.
    "origin",
    "referer",
    "x-csrftoken",  # settings.CSRF_HEADER_NAME
    # Static files (whitenoise): one HTTP-date (it holds a comma of its own), one range set.
    "if-modified-since",
    "range",
    "auxot-callback-url",
    "auxot-correlation-id",
    "content-length",  # gunicorn refuses two itself
    "content-type",  # gunicorn refuses two itself (RFC 9110 5.3)
    "host",  # gunicorn refuses two itself (RFC 9110 5.3)
    "idempotency-key",
    "x-request-id",
})
# Read as comma-separated lists, as HTTP defines them: repeated, they stay joined.
LIST_VALUED: dict[str, str] = {
    "accept": "content negotiation (DRF): a list of media ranges",
    "content-encoding": "a list of codings; any but identity is refused (intakes/body.py)",
    "forwarded": "one element per proxy (RFC 7239), read hop by hop",
    "transfer-encoding": "a list of codings; gunicorn checks it ends with chunked",
    "x-forwarded-for": "one address per proxy, read hop by hop",
    "accept-encoding": "whitenoise's choice of a compressed file: a list of codings",
    "if-none-match": "whitenoise's conditional GET: a list of entity tags",
}
# Several fields joined with "; " (RFC 9113 8.2.3), not refused, not joined with a comma.
COOKIE = "cookie"
# Read by the framework only under a setting Auxot leaves off, or for nothing a request's
# outcome depends on: repeated, they stay joined; each with why (the test checks the setting).
NOT_DECIDING: dict[str, str] = {
    "user-agent": "CommonMiddleware matches it against DISALLOWED_USER_AGENTS, which is "
                  "empty (and a joined value still holds each one it would match)",
    "x-forwarded-host": "read by get_host() only with USE_X_FORWARDED_HOST, which is off",
    "x-forwarded-port": "read by get_port() only with USE_X_FORWARDED_PORT, which is off",
}


def cookie_joined(values) -> str:
    """Several `Cookie` fields as the one value HTTP/1.1 has: joined with "; "
    (RFC 9113 8.2.3)."""
    return "; ".join(values)


def repeated_header(names) -> str | None:
    """The first single-valued header among `names` (the fields as sent, in any case) that
    occurs more than once, in its canonical spelling (`Idempotency-Key`), or None."""
    seen = set()
    for name in names:
        key = name.lower()
        if key in SINGLE_VALUED:
            if key in seen:
                return canonical(key)
            seen.add(key)
    return None


def canonical(name: str) -> str:
    """`IDEMPOTENCY-KEY` -> `Idempotency-Key`: how a detail names a field."""
    return "-".join(part.capitalize() for part in name.lower().split("-"))


def repeated_detail(name: str) -> str:
    return (f"The {name} header is sent more than once; it is read as one value: send it "
            "once. Nothing was read or accepted.")


class SingleValuedHeadersHandler:
    """Mixin for an http.server request handler (runserver's, wsgiref's): a request with a
    single-valued header twice is answered with the problem and the connection closed,
    before the application runs; several `Cookie` fields are joined with "; "."""

    def get_environ(self) -> dict:
        environ = super().get_environ()
        cookies = self.headers.get_all("Cookie") or []
        if len(cookies) > 1:  # wsgiref joined them with a comma
            environ["HTTP_COOKIE"] = cookie_joined(cookies)
        return environ

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        name = repeated_header(self.headers.keys())
        if name is None:
            return True
        from auxot.errors import PROBLEM_CONTENT_TYPE, PROBLEMS, problem_json

        status, title = PROBLEMS["invalid_request"]
        body = problem_json("invalid_request", repeated_detail(name))
        self.close_connection = True
        self.wfile.write(
            (f"{self.request_version} {status} {title}\r\nConnection: close\r\n"
             f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
             ).encode("latin-1") + body)
        self.log_request(status)
        return False
