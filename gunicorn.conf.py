"""gunicorn settings for Auxot's web process: `gunicorn auxot.wsgi` picks this file up.

Threaded workers (gthread) because long-polls (`?wait=N`) hold a thread, not a database
connection, while they wait: a sync worker would be taken by one waiting caller. But
threads that work at the same time cost throughput (GIL and database-pool contention: 64
working threads served fewer triggers than one), so the threads are decoupled from the
work: at most AUXOT_WEB_ACTIVE_REQUESTS (4) requests per process work at once, and a
waiting long-poll gives its slot back while it sleeps (auxot/activerequests.py). Each
process lets at most AUXOT_LONG_POLL_MAX_WAITERS (12) requests wait and answers the next
`?wait` at once (header `Auxot-Wait-Refused: busy`). With the default 16 threads that leaves
4 threads, and always all 4 working slots, for triggers and plain polls however many
callers long-poll: keep GUNICORN_THREADS >= AUXOT_LONG_POLL_MAX_WAITERS +
AUXOT_WEB_ACTIVE_REQUESTS. Threads do not each hold a database connection: a worker
borrows from a pool of at most DB_POOL_MAX_SIZE (8) connections, whatever the thread count
(see the Database section of auxot/settings.py for the whole budget). BENCHMARKS.md has
the figures (triggers per second by thread count, and while long-polls wait).

Every value can be overridden from the environment (GUNICORN_*) or the command line.
"""

import multiprocessing
import os


def _int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer.") from None
    if value < minimum:  # GUNICORN_WORKERS=0 started an arbiter that answered nobody
        raise ValueError(f"{name}={value} is below the minimum of {minimum}.")
    return value


bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
# gthread, answering what its parser refuses (an over-long request line, too many headers)
# as problem+json like every other answer: auxot/gunicorn_worker.py.
worker_class = "auxot.gunicorn_worker.ProblemThreadWorker"
workers = _int("GUNICORN_WORKERS",
               _int("WEB_CONCURRENCY", min(multiprocessing.cpu_count(), 4), minimum=1), minimum=1)
threads = _int("GUNICORN_THREADS", 16, minimum=1)
# A long-poll lasts at most AUXOT_LONG_POLL_MAX_SECONDS (30): the timeout must exceed it.
timeout = _int("GUNICORN_TIMEOUT", 60)
# SIGTERM: stop accepting, let in-flight requests finish for up to this long. It exceeds the
# long-poll cap (30 s) and the body-read deadline (AUXOT_BODY_READ_TIMEOUT_SECONDS, 10 s).
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 40)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# The app answers an oversized Authorization header (or any header up to 16 KiB) with a
# JSON 401/4xx itself; gunicorn's default 8 KiB cap would answer a plain-text 400 first.
limit_request_field_size = 16384
# Recycle workers now and then (with jitter, so they do not all restart together).
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 2000)
# No access log by default: a line per request costs throughput; set
# GUNICORN_ACCESSLOG=- to log to stdout (or a file's path). Its request line is the path
# without the query string, like the application's own lines: `?token=...` never reaches a log.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'
# Trust X-Forwarded-* only from the proxy that connects to gunicorn (nginx on this host).
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")


# /metrics in prometheus-client multiprocess mode: the arbiter forgets a dead worker's live
# gauges (its counters stay summed, as they must). Imported now, as the arbiter reads this
# file: child_exit runs inside gunicorn's SIGCHLD handler, and a first import there was
# re-entered by the next worker's SIGCHLD (a reload stops every worker at once): ImportError
# in the arbiter's main loop, and the whole web service died on `systemctl reload`.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import multiprocess as _multiprocess
else:
    _multiprocess = None


def child_exit(server, worker) -> None:
    if _multiprocess is not None:
        _multiprocess.mark_process_dead(worker.pid)


# gunicorn's own lines (start, signals, worker boots and timeouts, the access log) go through
# the application's formatters (auxot/logs.py): JSON objects with LOG_FORMAT=json, otherwise
# gunicorn's usual text with what a caller chose escaped (the access line's path is
# percent-decoded, its User-Agent and Referer are the caller's: `%0a` or ESC forged lines).
_json = os.environ.get("LOG_FORMAT", "").strip().lower() == "json"
# A logconfig_dict makes gunicorn log every request whatever `accesslog` says: the access
# logger gets a handler only when GUNICORN_ACCESSLOG asks for one (`-`: stdout, else a file).
_access = ({"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"}
           if accesslog == "-" else
           {"class": "logging.FileHandler", "formatter": "access", "filename": accesslog}
           if accesslog else None)
if _json:
    _formatters = {"lines": {"()": "auxot.logs.JsonFormatter"},
                   "access": {"()": "auxot.logs.JsonFormatter"}}
else:  # gunicorn's own formats (glogging.CONFIG_DEFAULTS, and its access logger's)
    _formatters = {"lines": {"class": "auxot.logs.TextFormatter",
                             "format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
                             "datefmt": "[%Y-%m-%d %H:%M:%S %z]"},
                   "access": {"class": "auxot.logs.TextFormatter", "format": "%(message)s"}}
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": _formatters,
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "lines",
                             "stream": "ext://sys.stderr"},
                 **({"access": _access} if _access else {})},
    "loggers": {
        # No level: gunicorn's own (`--log-level`, INFO by default) stays.
        "gunicorn.error": {"handlers": ["console"], "propagate": False},
        "gunicorn.access": {"handlers": ["access"] if _access else [],
                            "level": "INFO" if _access else "CRITICAL", "propagate": False},
    },
}
