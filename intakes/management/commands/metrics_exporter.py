"""`manage.py metrics_exporter`: serve /metrics from a host that runs no web process.

A worker host runs qcluster with PROMETHEUS_MULTIPROC_DIR set; this command, given the same
directory, serves the sum of every worker process's counters and histograms (plus the
database-backed gauges), protected like the web /metrics: AUXOT_METRICS_TOKEN and/or
AUXOT_METRICS_ALLOWED_NETWORKS must be set, or it refuses to start.
"""

from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import CONTENT_TYPE_LATEST

from auxot.errors import problem_body, problem_json
from auxot.metrics import metrics_render, multiprocess_dir
from intakes.ops.collector import StateCollector
from intakes.ops.views import metrics_refusal_for


def metrics_app(environ, start_response):
    if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") != "GET":
        return _problem(start_response, "not_found", "Only GET /metrics is served here.")
    refused = metrics_refusal_for(ip=environ.get("REMOTE_ADDR"),
                                  authorization=environ.get("HTTP_AUTHORIZATION", ""))
    if refused is not None:
        return _problem(start_response, *refused)
    body = metrics_render(StateCollector())
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                              ("Content-Length", str(len(body)))])
    return [body]


def _problem(start_response, code: str, detail: str):
    body = problem_body(code, detail)
    data = problem_json(code, detail)
    headers = [("Content-Type", "application/problem+json"), ("Content-Length", str(len(data)))]
    if code == "unauthorized":
        headers.append(("WWW-Authenticate", 'Bearer realm="metrics"'))
    start_response(f"{body['status']} {body['title']}", headers)
    return [data]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # scrapes every 15 s: not worth a line each
        pass


class Command(BaseCommand):
    help = "Serve GET /metrics (Prometheus) for this host's worker processes."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default="127.0.0.1",
                            help="Address to listen on (default 127.0.0.1; 0.0.0.0: all).")
        parser.add_argument("--port", type=int, default=9108)

    def handle(self, *args, bind: str, port: int, **options) -> None:
        if not settings.AUXOT_METRICS_TOKEN and not settings.AUXOT_METRICS_ALLOWED_NETWORKS:
            raise CommandError("Set AUXOT_METRICS_TOKEN or AUXOT_METRICS_ALLOWED_NETWORKS first.")
        if not multiprocess_dir():
            self.stderr.write("PROMETHEUS_MULTIPROC_DIR is not set: only this process's own "
                              "metrics and the database gauges will be served.")
        server = make_server(bind, port, metrics_app, server_class=WSGIServer,
                             handler_class=_QuietHandler)
        self.stdout.write(f"serving /metrics on {bind}:{server.server_port}", ending="\n")
        self.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
