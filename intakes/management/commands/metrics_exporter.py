"""`manage.py metrics_exporter`: serve /metrics from a host that runs no web process.

A worker host runs qcluster with PROMETHEUS_MULTIPROC_DIR set; this command, given the same
directory, serves the sum of every worker process's counters and histograms (plus the
database-backed gauges), protected like the web /metrics: AUXOT_METRICS_TOKEN and/or
AUXOT_METRICS_ALLOWED_NETWORKS must be set, or it refuses to start.
"""

import argparse
import contextlib
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from prometheus_client import CONTENT_TYPE_LATEST

from auxot.errors import problem_body, problem_json
from auxot.http import came_through_proxy, meta_peer_ip
from auxot.metrics import metrics_render, multiprocess_dir
from auxot.singleheaders import SingleValuedHeadersHandler
from intakes.ops.collector import StateCollector
from intakes.ops.views import metrics_refusal_for

logger = logging.getLogger(__name__)


def metrics_app(environ, start_response):
    if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") != "GET":
        return _problem(start_response, "not_found", "Only GET /metrics is served here.")
    refused = metrics_refusal_for(
        ip=meta_peer_ip(environ), authorization=environ.get("HTTP_AUTHORIZATION", ""),
        forwarded=came_through_proxy(environ))
    if refused is not None:
        return _problem(start_response, *refused)
    try:
        body = metrics_render(StateCollector())
    finally:
        connection.close()  # this request's thread's own connection
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                              ("Content-Length", str(len(body)))])
    return [body]


def _problem(start_response, code: str, detail: str):
    body = problem_body(code, detail)
    data = problem_json(code, detail)
    headers = [("Content-Type", "application/problem+json"), ("Content-Length", str(len(data)))]
    if code == "metrics_unauthorized":
        headers.append(("WWW-Authenticate", 'Bearer realm="metrics"'))
    start_response(f"{body['status']} {body['title']}", headers)
    return [data]


class _QuietHandler(SingleValuedHeadersHandler, WSGIRequestHandler):
    """Two `Authorization` fields are refused, as by the web process (auxot/singleheaders.py):
    wsgiref would join them into one token."""

    REQUEST_SECONDS = 5.0  # the whole request line and headers must arrive within this
    timeout = REQUEST_SECONDS  # and each read (an idle connection goes)

    def setup(self) -> None:
        super().setup()
        # The socket timeout bounds each read, not a client that sends a byte a second: a
        # deadline on the whole request shuts the socket, so the blocked read returns.
        self._deadline = threading.Timer(self.REQUEST_SECONDS, self._too_slow)
        self._deadline.daemon = True
        self._deadline.start()

    def _too_slow(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def parse_request(self) -> bool:
        try:
            return super().parse_request()  # reads the headers
        finally:
            self._deadline.cancel()  # the request line and headers are in

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format, *args) -> None:  # scrapes every 15 s: not worth a line each
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection (at most MAX_CONNECTIONS; more are closed at once), each
    with the handler's deadline on its whole request: slow or idle connections, before any
    authentication, hold a slot for at most REQUEST_SECONDS, so they cannot keep scrapes
    from being answered for longer."""

    daemon_threads = True
    MAX_CONNECTIONS = 16

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread took the slot (none could start)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out or hung up: nothing to report


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:  # 0: the system picks a free one
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port from 0 to 65535")
    return value


class Command(BaseCommand):
    help = "Serve GET /metrics (Prometheus) for this host's worker processes."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default="127.0.0.1",
                            help="Address to listen on (default 127.0.0.1; 0.0.0.0: all).")
        parser.add_argument("--port", type=_port, default=9108,
                            help="default 9108; 0: any free port (printed)")
        parser.add_argument("--request-seconds", type=float, default=5.0,
                            help="How long a connection may take to send its request "
                                 "(default 5): a slower one is closed.")

    def handle(self, *args, bind: str, port: int, request_seconds: float, **options) -> None:
        if not 0 < request_seconds <= 60:
            raise CommandError("--request-seconds must be above 0 and at most 60.")
        _QuietHandler.REQUEST_SECONDS = _QuietHandler.timeout = request_seconds
        if not settings.AUXOT_METRICS_TOKEN and not settings.AUXOT_METRICS_ALLOWED_NETWORKS:
            raise CommandError("Set AUXOT_METRICS_TOKEN or AUXOT_METRICS_ALLOWED_NETWORKS first.")
        if not multiprocess_dir():  # a log line: with LOG_FORMAT=json, stderr is all JSON
            logger.warning("metrics_exporter: PROMETHEUS_MULTIPROC_DIR is not set: only this "
                           "process's own metrics and the database gauges will be served")
        try:
            server = make_server(bind, port, metrics_app, server_class=_Server,
                                 handler_class=_QuietHandler)
        except OSError as exc:  # an address that is no host's, a port in use or not ours
            raise CommandError(f"cannot listen on {bind}:{port}: {exc}") from None
        # stdout keeps the plain line a script reads the port from (--port 0); the log line
        # is for the operator's log (JSON with LOG_FORMAT=json).
        self.stdout.write(f"serving /metrics on {bind}:{server.server_port}", ending="\n")
        self.stdout.flush()
        logger.info("metrics_exporter: serving /metrics on %s:%s", bind, server.server_port)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
