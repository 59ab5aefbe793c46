"""System checks for settings whose problems are not errors (`manage.py check` shows them).

- `auxot.W001`: the processes this host starts must fit PostgreSQL's connection budget.
- `auxot.W002`: a deprecated setting is in use.
- `auxot.W003`: gunicorn's threads leave no room for triggers beside the long-polls.
- `auxot.W004`: the bench's ceiling endpoints (no sign-in) are on outside DEBUG.
- `auxot.W005` (`check --deploy`): no AUXOT_PUBLIC_BASE_URL, so links built without a
  request (callbacks', a poll's `approve_url`) are bare paths.
"""

from django.conf import settings
from django.core.checks import Warning, register
from django.db import connections

# A qcluster's processes besides its workers that hold a connection: the sentinel (schedules),
# the pusher (ORM broker; on PostgreSQL a second one to LISTEN for messages), the monitor and
# the ticker thread, which holds a second one to LISTEN for committed work on PostgreSQL.
QCLUSTER_OVERHEAD = 6
# The callback dispatcher in the main process: its 4 database threads (attempt rows and
# outcomes), its claim loop and its LISTEN connection. Its senders hold no connection.
DISPATCHER_CONNECTIONS = 6


def dispatcher_connections() -> int:
    if settings.AUXOT_CALLBACK_DELIVERY != "dispatcher" or not settings.AUXOT_CALLBACK_THREADS:
        return 0
    return DISPATCHER_CONNECTIONS


def connection_estimate() -> dict[str, int]:
    """Connections this host's default processes may hold at most: one gunicorn, one qcluster."""
    per_web = settings.DB_POOL_MAX_SIZE or settings.AUXOT_WEB_THREADS + 1  # +1: long-poll watcher
    web = settings.AUXOT_WEB_PROCESSES * per_web
    worker = settings.Q_CLUSTER["workers"] + QCLUSTER_OVERHEAD + dispatcher_connections()
    return {"web": web, "per_web": per_web, "qcluster": worker, "total": web + worker}


@register("database")
def connection_budget_check(app_configs=None, **kwargs) -> list[Warning]:
    if connections["default"].vendor != "postgresql":
        return []  # SQLite: no server-side connection limit
    estimate = connection_estimate()
    budget = settings.AUXOT_DB_MAX_CONNECTIONS
    if estimate["total"] <= budget:
        return []
    return [Warning(
        f"Up to {estimate['total']} database connections from this host: "
        f"{settings.AUXOT_WEB_PROCESSES} web processes x {estimate['per_web']} + one qcluster "
        f"({settings.Q_CLUSTER['workers']} workers + {QCLUSTER_OVERHEAD} + callback dispatcher "
        f"{dispatcher_connections()}) = {estimate['total']}, "
        f"above AUXOT_DB_MAX_CONNECTIONS={budget}.",
        hint="Lower GUNICORN_WORKERS, DB_POOL_MAX_SIZE or AUXOT_WORKERS, raise PostgreSQL's "
             "max_connections (and AUXOT_DB_MAX_CONNECTIONS with it), or put PgBouncer in front.",
        id="auxot.W001",
    )]


@register()
def deprecated_settings(app_configs, **kwargs) -> list[Warning]:
    if getattr(settings, "AUXOT_CALLBACK_ALLOWED_NETWORKS", None):
        return [Warning(
            "AUXOT_CALLBACK_ALLOWED_NETWORKS is deprecated; it is merged into "
            "AUXOT_OUTBOUND_ALLOWED_NETWORKS, which covers callbacks, http steps and agent "
            "providers alike.",
            hint="Rename the variable to AUXOT_OUTBOUND_ALLOWED_NETWORKS.",
            id="auxot.W002")]
    return []


@register()
def web_threads_check(app_configs, **kwargs) -> list[Warning]:
    """A process lets AUXOT_LONG_POLL_MAX_WAITERS requests wait; with fewer threads than that
    plus AUXOT_WEB_ACTIVE_REQUESTS, waiting long-polls can take every thread and triggers
    queue behind them."""
    threads, waiters = settings.AUXOT_WEB_THREADS, settings.AUXOT_LONG_POLL_MAX_WAITERS
    working = settings.AUXOT_WEB_ACTIVE_REQUESTS
    if threads >= waiters + working:
        return []
    return [Warning(
        f"GUNICORN_THREADS={threads} is below AUXOT_LONG_POLL_MAX_WAITERS ({waiters}) + "
        f"AUXOT_WEB_ACTIVE_REQUESTS ({working}): waiting long-polls can hold every thread.",
        hint="Raise GUNICORN_THREADS or lower AUXOT_LONG_POLL_MAX_WAITERS.",
        id="auxot.W003")]


@register()
def bench_endpoints_check(app_configs, **kwargs) -> list[Warning]:
    if not settings.AUXOT_BENCH_CEILINGS or settings.DEBUG:
        return []
    return [Warning(
        "AUXOT_BENCH_CEILINGS is on outside DEBUG: /bench/ endpoints that need no sign-in "
        "write rows into the database.",
        hint="Unset AUXOT_BENCH_CEILINGS outside a benchmark run.", id="auxot.W004")]


@register(deploy=True)
def public_base_url_check(app_configs, **kwargs) -> list[Warning]:
    """`Location` and `status_url` fall back to the request's host, but a callback has no
    request, and a poll's body once finished is the callback's byte for byte: their links
    (`approve_url`, a carried step's `url`) can only come from the setting."""
    if settings.AUXOT_PUBLIC_BASE_URL:
        return []
    return [Warning(
        "AUXOT_PUBLIC_BASE_URL is not set: the links in callbacks and polls (a waiting "
        "item's approve_url, a carried step's url) are bare paths such as /admin/....",
        hint="Set AUXOT_PUBLIC_BASE_URL to the address callers and approvers use, e.g. "
             "https://auxot.example.com.", id="auxot.W005")]
