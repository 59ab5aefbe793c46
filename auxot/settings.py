"""Auxot settings: one file, configured from the environment.

Every value read here fails loudly at start-up (ImproperlyConfigured) when it is
present but malformed, so a typo in production never silently becomes a default.

One section per concern, in this order: environment helpers; core and security; apps and
middleware; templates and static files; database; public API; queue and engine; outbound
requests and secrets; callbacks; admin and audit; logging. This module and auxot/urls.py
are the composition root: the only core modules that name the other apps.
"""

import contextlib
import ipaddress
import json
import math
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from auxot.hosts import host_patterns_normalize

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

# --- Environment helpers ------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no).")


def env_int(name: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum of {maximum}.")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if not math.isfinite(value):  # `nan < minimum` is False: it would pass every bound
        raise ImproperlyConfigured(f"{name}={raw!r} is not a finite number.")
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [part.strip() for part in raw.split(",") if part.strip()]


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_log_level(name: str, default: str) -> str:
    raw = os.environ.get(name, "").strip().upper() or default
    if raw not in _LOG_LEVELS:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a log level ({', '.join(_LOG_LEVELS)}).")
    return raw


def env_redis_url(name: str, default: str = "") -> str:
    """A Redis URL (or "" for none). Checked now: a bad one would let the web process start
    and fail later, in the worker's sentinel or on every trigger. The value may hold a
    password, so the message does not repeat it."""
    raw = env_str(name, default).strip()
    if raw and raw.lower() != "off" and urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(f"{name} must be a redis://, rediss:// or unix:// URL.")
    return raw


def env_networks(name: str, also: list[str] = ()) -> list[str]:
    """Comma-separated CIDRs (plus `also`, once each), each checked to be a network."""
    networks = list(dict.fromkeys([*env_list(name, []), *also]))
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {exc}") from None
    return networks


def env_trusted_proxies() -> list[str]:
    """AUXOT_TRUSTED_PROXIES, else gunicorn's GUNICORN_FORWARDED_ALLOW_IPS (so one setting
    covers both), else this host's loopback: CIDRs, or `*` alone for any peer."""
    own = os.environ.get("AUXOT_TRUSTED_PROXIES")
    name, raw = (("AUXOT_TRUSTED_PROXIES", own) if own is not None else
                 ("GUNICORN_FORWARDED_ALLOW_IPS", os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS")))
    if raw is None:
        return ["127.0.0.1", "::1"]
    if raw.strip() == "*":
        return ["*"]
    networks = env_networks(name)
    for net in networks:
        # Trusting every address trusts the caller too: its own X-Forwarded-For would be
        # believed, down to the first entry it wrote.
        if ipaddress.ip_network(net, strict=False).prefixlen == 0:
            raise ImproperlyConfigured(
                f"{name}={net} trusts every address, so any caller could choose the address "
                "recorded as its own: set AUXOT_TRUSTED_PROXIES to the proxies' addresses, "
                "or to * for the one proxy in front whatever its address.")
    return networks


FORWARDED_HEADERS = {"x-forwarded-for": "X-Forwarded-For", "forwarded": "Forwarded"}


def env_forwarded_header(name: str) -> str:
    """X-Forwarded-For (the default) or Forwarded, in any case."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return FORWARDED_HEADERS["x-forwarded-for"]
    try:
        return FORWARDED_HEADERS[raw.lower()]
    except KeyError:
        raise ImproperlyConfigured(
            f"{name}={raw!r}: must be X-Forwarded-For or Forwarded (the header the trusted "
            "proxies write the caller's address into).") from None


def env_base_url(name: str) -> str:
    raw = os.environ.get(name, "").strip().rstrip("/")
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            f"{name}={raw!r} must be an absolute http(s) URL such as https://auxot.example.com"
        )
    return raw


# --- Core and security --------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set (or DEBUG=1 for a development default).")
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"  # noqa: S105

# Older keys, newest first, after rotating SECRET_KEY (comma-separated): sessions and the
# secrets stored encrypted with them (organization secrets, signing secrets) stay readable.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])

# HTTPS (the README's deployment: TLS at the proxy, which sets X-Forwarded-Proto). The
# admin's session and CSRF cookies are sent over HTTPS only unless DEBUG or turned off (an
# install reached over plain http); HSTS and the redirect to https are the operator's call
# (HSTS sticks in browsers; a proxy usually redirects), off by default.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("AUXOT_SECURE_COOKIES", not DEBUG)
SECURE_HSTS_SECONDS = env_int("AUXOT_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("AUXOT_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("AUXOT_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("AUXOT_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes speak http

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if not ALLOWED_HOSTS and not DEBUG:
    raise ImproperlyConfigured("ALLOWED_HOSTS is empty: every request would be refused (400). "
                               "Name the host names this server answers to, comma-separated.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Public base URL used to build links (Location, status_url, admin snippets). Empty: the
# request's own scheme and host are used.
AUXOT_PUBLIC_BASE_URL = env_base_url("AUXOT_PUBLIC_BASE_URL")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
FORMAT_MODULE_PATH = ["auxot.formats"]  # times shown with their zone (auxot/formats)
USE_TZ = True

# --- Apps and middleware ------------------------------------------------------------------
INSTALLED_APPS = [
    # Our apps first: workflows overrides django-q2's `qcluster` command, and intakes'
    # templates (the admin index's Tools box) override the admin's own.
    "auxot",
    "apikeys",
    "workflows",
    "intakes",
    "auxot.apps.AuxotAdminConfig",  # django.contrib.admin, every page audited
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_q",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / Redoc assets served locally, no CDN
]

MIDDLEWARE = [
    # First: every response (errors included) carries the request id, every log line too.
    "auxot.requestid.RequestIdMiddleware",
    # A NUL in a page's querystring: 400 (PostgreSQL would refuse it mid-query, a 500).
    "auxot.http.NulInQueryRefused",
    # Then: at most AUXOT_WEB_ACTIVE_REQUESTS requests of this process work at once.
    "auxot.activerequests.ActiveRequestsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The admin's signed-in user, for audit rows of cascades (a team's keys): auxot/actor.py.
    "auxot.actor.ActingUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "auxot.urls"
WSGI_APPLICATION = "auxot.wsgi.application"

# --- Templates and static files -----------------------------------------------------------
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
with contextlib.suppress(OSError):  # a read-only code directory: whitenoise only warns
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns otherwise
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Database ------------------------------------------------------------------------------
# Connection budget. A web process (auxot/wsgi.py sets AUXOT_WEB_PROCESS) serves many threads
# but borrows from a psycopg pool of at most DB_POOL_MAX_SIZE connections, whatever
# GUNICORN_THREADS says. Every other process (qcluster's sentinel, pusher, monitor and
# workers, its ticker thread, manage.py) keeps one persistent connection per thread that
# touches the database; a pool must not cross qcluster's fork, so they do not pool.
# Default total for one host: 4 web processes x 8 + one qcluster (2 workers + 6 of its own:
# sentinel, pusher and its listener, monitor, ticker and its listener; + 6 for the callback
# dispatcher) = 46, under PostgreSQL's default max_connections (100, 3 of them reserved for
# superusers). The `auxot.W001` check (auxot/checks.py, connection_estimate) warns when the
# estimate exceeds AUXOT_DB_MAX_CONNECTIONS (set it to this host's share of max_connections).
AUXOT_WEB_PROCESS = env_bool("AUXOT_WEB_PROCESS", False)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 8, minimum=0)  # 0: no pool, persistent conns
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 2, minimum=0)
# A request waits this long for a free pooled connection, then gets 503 database_unavailable.
DB_POOL_TIMEOUT_SECONDS = env_float("DB_POOL_TIMEOUT_SECONDS", 10.0, minimum=0.1)
AUXOT_DB_MAX_CONNECTIONS = env_int("AUXOT_DB_MAX_CONNECTIONS", 100, minimum=1)
# What gunicorn.conf.py starts from the same environment: read here for the budget check.
AUXOT_WEB_PROCESSES = env_int("GUNICORN_WORKERS",
                              env_int("WEB_CONCURRENCY", min(os.cpu_count() or 1, 4), minimum=1),
                              minimum=1)
AUXOT_WEB_THREADS = env_int("GUNICORN_THREADS", 16, minimum=1)
if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE > 0:
    raise ImproperlyConfigured(
        f"DB_POOL_MIN_SIZE={DB_POOL_MIN_SIZE} is above DB_POOL_MAX_SIZE={DB_POOL_MAX_SIZE}.")
_default_db_url = f"sqlite:///{VAR_DIR / 'auxot.sqlite3'}"
DATABASE_URL = env_str("DATABASE_URL", _default_db_url) or _default_db_url
try:
    # A connection per request costs ~6x throughput: keep them open (or pooled, below).
    _db = dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    _db["OPTIONS"] = {
        # Web, worker and ticker share one file: wait for locks instead of failing, and
        # take the write lock at BEGIN so two writers never deadlock on an upgrade.
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DB_POOLED = (AUXOT_WEB_PROCESS and DB_POOL_MAX_SIZE > 0
             and _db["ENGINE"] == "django.db.backends.postgresql")
if DB_POOLED:
    # Django's pool needs CONN_MAX_AGE=0: "closing" a connection returns it to the pool.
    # CONN_HEALTH_CHECKS (kept on) makes the pool check a connection before handing it out,
    # so one that died idle (PostgreSQL restarted) is replaced, not given to a request.
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": DB_POOL_MIN_SIZE, "max_size": DB_POOL_MAX_SIZE,
        "timeout": DB_POOL_TIMEOUT_SECONDS,
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Public API ---------------------------------------------------------------------------
AUXOT_MAX_BODY_BYTES = env_int("AUXOT_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = AUXOT_MAX_BODY_BYTES
# A key's last_used_at is written at most once per this many seconds (not on every call).
AUXOT_KEY_TOUCH_SECONDS = env_int("AUXOT_KEY_TOUCH_SECONDS", 60, minimum=0)
# The whole body must arrive within this many seconds of the request reaching the app, or
# the answer is 408 request_timeout and the thread is free again (auxot/bodydeadline.py).
AUXOT_BODY_READ_TIMEOUT_SECONDS = env_float("AUXOT_BODY_READ_TIMEOUT_SECONDS", 10.0,
                                            minimum=0.1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apikeys.authentication.BearerKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["apikeys.authentication.HasApiKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "auxot.errors.JSONWhateverAccepted",
    "DEFAULT_PARSER_CLASSES": ["intakes.body.StrictJSONParser"],
    "EXCEPTION_HANDLER": "auxot.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Auxot API",
    "DESCRIPTION": (
        "Trigger a workflow with one authenticated POST, get `202` and a `work_id`, then poll "
        "(optionally long-poll with `?wait=N`) until the work item is `completed` or `failed`. "
        "Errors are `application/problem+json` (RFC 9457)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SCHEMA_PATH_PREFIX": r"/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",  # assets served by whitenoise from the sidecar, no CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "PREPROCESSING_HOOKS": ["intakes.openapi.only_public_api"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "intakes.openapi.link_trigger_to_poll",
    ],
}
# Requests of one web process that work at once (auxot/activerequests.py); the rest wait in
# their thread. A long-poll gives its slot back while it waits. 0: no limit.
AUXOT_WEB_ACTIVE_REQUESTS = env_int("AUXOT_WEB_ACTIVE_REQUESTS", 4, minimum=0)
# ?wait=N on the poll: the longest N accepted, how often a waiting request rechecks, and how
# many requests one web process lets wait at once (beyond that, wait is answered at once so
# long-polls can never take every server thread; keep it at most gunicorn's `threads` minus
# AUXOT_WEB_ACTIVE_REQUESTS).
AUXOT_LONG_POLL_MAX_SECONDS = env_int("AUXOT_LONG_POLL_MAX_SECONDS", 30, minimum=1)
AUXOT_LONG_POLL_RECHECK_SECONDS = env_float("AUXOT_LONG_POLL_RECHECK_SECONDS", 0.25,
                                            minimum=0.01)
AUXOT_LONG_POLL_MAX_WAITERS = env_int("AUXOT_LONG_POLL_MAX_WAITERS", 12, minimum=0)
# Of those, one API key may hold at most this many (default: half), so one busy caller
# cannot leave every other caller with plain polls.
AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY = env_int(
    "AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY", max(1, AUXOT_LONG_POLL_MAX_WAITERS // 2), minimum=1)
# And one organization, however many keys it has, at most this many (default: all but a
# quarter, at least one slot), so a tenant cannot take every slot by spreading its polls
# over its keys (each member may have up to AUXOT_MAX_KEYS_PER_USER, plus team keys).
AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG = env_int(
    "AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG",
    max(1, AUXOT_LONG_POLL_MAX_WAITERS - max(1, AUXOT_LONG_POLL_MAX_WAITERS // 4)), minimum=1)
# Polls (GET of a work item, long-polls included) per second one API key, and one
# organization across its keys, may make to one web process; 0 switches a limit off.
AUXOT_POLL_RATE_PER_KEY = env_int("AUXOT_POLL_RATE_PER_KEY", 50, minimum=0)
AUXOT_POLL_RATE_PER_ORG = env_int("AUXOT_POLL_RATE_PER_ORG", 200, minimum=0)
# Idempotency-Key records are kept at least this long (the IETF draft and Stripe: 24 h).
AUXOT_IDEMPOTENCY_TTL_HOURS = env_int("AUXOT_IDEMPOTENCY_TTL_HOURS", 24, minimum=24)
# PostgreSQL: how long a retry waits for an in-flight first request before answering 409.
AUXOT_IDEMPOTENCY_WAIT_MS = env_int("AUXOT_IDEMPOTENCY_WAIT_MS", 2000, minimum=1)
# Fixed-window rate limits on accepted triggers; 0 switches a limit off.
AUXOT_RATE_LIMIT_WINDOW_SECONDS = env_int("AUXOT_RATE_LIMIT_WINDOW_SECONDS", 60, minimum=1)
AUXOT_RATE_LIMIT_KEY = env_int("AUXOT_RATE_LIMIT_KEY", 1200, minimum=0)
AUXOT_RATE_LIMIT_INTAKE = env_int("AUXOT_RATE_LIMIT_INTAKE", 6000, minimum=0)
AUXOT_RATE_LIMIT_ORG = env_int("AUXOT_RATE_LIMIT_ORG", 20000, minimum=0)
# Active (unrevoked, unexpired) personal keys one user may hold in one organization.
AUXOT_MAX_KEYS_PER_USER = env_int("AUXOT_MAX_KEYS_PER_USER", 20, minimum=0)
# bench/ only: mounts the two ceiling views (one INSERT + COMMIT, one GET by pk).
AUXOT_BENCH_CEILINGS = env_bool("AUXOT_BENCH_CEILINGS", False)

# --- Queue and engine ---------------------------------------------------------------------
# Steps get this long before their lease expires and the sweeper hands them to another worker.
AUXOT_STEP_TIMEOUT_SECONDS = env_int("AUXOT_STEP_TIMEOUT_SECONDS", 60, minimum=1)
# A step's output (and an expression's result), written as JSON, may be at most this long:
# it is stored, polled and sent in callbacks. An http step reads at most 8 MiB of an answer.
AUXOT_STEP_OUTPUT_MAX_CHARS = env_int("AUXOT_STEP_OUTPUT_MAX_CHARS", 8 * 1024 * 1024,
                                      minimum=1024)
# ... and an item's step outputs together (a workflow of fifty steps each writing 8 MiB was
# 400 MiB per trigger, all loaded into a worker's memory at each claim).
AUXOT_ITEM_OUTPUT_MAX_CHARS = env_int("AUXOT_ITEM_OUTPUT_MAX_CHARS",
                                      4 * AUXOT_STEP_OUTPUT_MAX_CHARS, minimum=1024)
AUXOT_STEP_MAX_ATTEMPTS = env_int("AUXOT_STEP_MAX_ATTEMPTS", 3, minimum=1)
AUXOT_LEASE_GRACE_SECONDS = env_int("AUXOT_LEASE_GRACE_SECONDS", 10, minimum=1)
# How long one django-q2 task keeps draining other due items after its own.
AUXOT_DRAIN_SECONDS = env_float("AUXOT_DRAIN_SECONDS", 2.0)
# The ticker inside qcluster: how often it looks for due items, and when it assumes a
# queue message was lost and enqueues the item again.
AUXOT_TICK_SECONDS = env_float("AUXOT_TICK_SECONDS", 0.2, minimum=0.01)
# PostgreSQL: a web process wakes the workers (NOTIFY) at most once per this many seconds
# of triggers; 0 = every trigger (NOTIFYs serialize commits database-wide).
AUXOT_WAKE_COALESCE_SECONDS = env_float("AUXOT_WAKE_COALESCE_SECONDS", 0.05, minimum=0.0)
AUXOT_REQUEUE_AFTER_SECONDS = env_int("AUXOT_REQUEUE_AFTER_SECONDS", 60, minimum=1)
AUXOT_HEARTBEAT_SECONDS = env_int("AUXOT_HEARTBEAT_SECONDS", 5, minimum=1)
# After SIGTERM/SIGINT, qcluster lets in-flight steps finish this long, then SIGKILLs what is
# left (their leases expire and another worker resumes them). Keep the supervisor's stop
# timeout (systemd TimeoutStopSec, Kubernetes terminationGracePeriodSeconds) above it.
AUXOT_WORKER_GRACE_SECONDS = env_float("AUXOT_WORKER_GRACE_SECONDS", 30.0, minimum=1.0)

REDIS_URL = env_redis_url("REDIS_URL")
AUXOT_TASK_TIMEOUT_SECONDS = env_int("AUXOT_TASK_TIMEOUT_SECONDS", 300, minimum=10)
Q_CLUSTER = {
    "name": env_str("AUXOT_Q_NAME", "auxot"),
    "workers": env_int("AUXOT_WORKERS", 2, minimum=1),
    # timeout must stay below retry, or a running task is handed out twice.
    "timeout": AUXOT_TASK_TIMEOUT_SECONDS,
    "retry": AUXOT_TASK_TIMEOUT_SECONDS + 60,
    # django-q2 would retry a failing task forever (max_attempts 0): the engine owns retries.
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": -1,  # no Task row per success: the work item is the record
    "recycle": 500,
    "max_rss": 262144,  # KiB: a worker that grows past 256 MiB is replaced after its task
    "catch_up": False,
    "label": "Background tasks",
    "sync": env_bool("AUXOT_Q_SYNC", False),
}
# Rate-limit counters: an atomic Redis counter per scope when set (default: the Redis
# broker's URL, if the broker is Redis), else the database's; "off" forces the database.
AUXOT_RATELIMIT_REDIS_URL = env_redis_url("AUXOT_RATELIMIT_REDIS_URL", REDIS_URL)
if AUXOT_RATELIMIT_REDIS_URL.strip().lower() == "off":
    AUXOT_RATELIMIT_REDIS_URL = ""
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    # django-q2's ORM broker, woken by NOTIFY on PostgreSQL (auxot/broker.py). There the poll
    # is only the safety net (a message whose lock expired sends no NOTIFY); on SQLite the
    # pusher polls, and its latency is about poll/2 + 10 ms (measured with bench/).
    Q_CLUSTER["broker_class"] = "auxot.orm_broker.ListeningORM"
    Q_CLUSTER["poll"] = env_float(
        "AUXOT_ORM_POLL_SECONDS",
        1.0 if _db["ENGINE"] == "django.db.backends.postgresql" else 0.05, minimum=0.01)

# A drain task claims up to AUXOT_DRAIN_BATCH due items in one statement, runs them, and
# claims again until nothing is due or AUXOT_DRAIN_SECONDS have passed.
AUXOT_DRAIN_BATCH = env_int("AUXOT_DRAIN_BATCH", 32, minimum=1)
# ... and loads their step outputs a group at a time, at most this many characters together
# (an item past it alone): 32 items of AUXOT_ITEM_OUTPUT_MAX_CHARS each were 1 GiB at once.
AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS = env_int("AUXOT_DRAIN_BATCH_OUTPUT_MAX_CHARS",
                                             2 * AUXOT_ITEM_OUTPUT_MAX_CHARS, minimum=1024)
# Tasks a cluster prefetches from the broker: with at most one drain message waiting on the
# broker, a backlog of any size holds <= 2 x workers + 1 messages per cluster.
Q_CLUSTER["queue_limit"] = env_int("AUXOT_Q_QUEUE_LIMIT", Q_CLUSTER["workers"], minimum=1)
# Step kinds: an http step's request timeout when its config names none.
AUXOT_HTTP_TIMEOUT_SECONDS = env_float("AUXOT_HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Retries (http and agent): exponential backoff with jitter, base * 2^(attempt-1) capped,
# never sooner than the server's Retry-After (itself capped).
AUXOT_RETRY_BACKOFF_BASE_SECONDS = env_float("AUXOT_RETRY_BACKOFF_BASE_SECONDS", 2.0,
                                             minimum=0.01)
AUXOT_RETRY_BACKOFF_CAP_SECONDS = env_float("AUXOT_RETRY_BACKOFF_CAP_SECONDS", 300.0,
                                            minimum=0.01)
AUXOT_RETRY_AFTER_MAX_SECONDS = env_float("AUXOT_RETRY_AFTER_MAX_SECONDS", 3600.0, minimum=0)
# An item waiting for a provider slot looks again this often (a release wakes it sooner).
AUXOT_PROVIDER_RECHECK_SECONDS = env_float("AUXOT_PROVIDER_RECHECK_SECONDS", 2.0, minimum=0.1)

# --- Outbound requests (callbacks, http steps, agent providers) and secrets ---------------
# Loopback/private/link-local/... destinations are refused unless listed here: CIDRs and
# exact host names (comma-separated) for an install's own receivers.
# AUXOT_CALLBACK_ALLOWED_NETWORKS is the deprecated name of the networks list (merged in).
AUXOT_CALLBACK_ALLOWED_NETWORKS = env_list("AUXOT_CALLBACK_ALLOWED_NETWORKS", [])
AUXOT_OUTBOUND_ALLOWED_NETWORKS = env_networks("AUXOT_OUTBOUND_ALLOWED_NETWORKS",
                                               also=AUXOT_CALLBACK_ALLOWED_NETWORKS)
# A caller's own callback URL (the Auxot-Callback-Url header) is any key holder's input, so
# the lists above (what organization admins configure may reach) do not apply to it; these
# networks (CIDRs, comma-separated; none by default) do.
AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = env_networks("AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS")
AUXOT_OUTBOUND_ALLOWED_HOSTS = [
    host.lower().rstrip(".") for host in env_list("AUXOT_OUTBOUND_ALLOWED_HOSTS", [])]
for _host in AUXOT_OUTBOUND_ALLOWED_HOSTS:
    if not _host or any(c in _host for c in "/:@%[]\\ ") or "*" in _host:
        raise ImproperlyConfigured(
            f"AUXOT_OUTBOUND_ALLOWED_HOSTS: {_host!r} is not an exact host name.")

# Steps and providers read only their organization's secrets (Secrets in the admin). The
# one escape hatch is the operator's: {"<org slug>": ["ENV_NAME", ...]} lets that org's
# {"env": "ENV_NAME"} references read the worker's environment (sent to any host), and
# {"<org slug>": {"ENV_NAME": ["api.example.com", "*.example.net"]}} binds them to hosts.
_OPERATOR_SECRET_REFUSED = re.compile(r"^(SECRET_KEY.*|DATABASE_URL|REDIS_URL|AUXOT_.*)$")


def env_operator_secrets(name: str) -> dict[str, dict[str, list[str] | None]]:
    """{org slug: {ENV_NAME: host patterns, or None for any host}} from JSON in the env."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}

    def bad(why: str):
        return ImproperlyConfigured(f"{name}: {why}")

    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad('expected {"<org slug>": ["ENV_NAME", ...]}')
    grants: dict[str, dict[str, list[str] | None]] = {}
    for slug, names in data.items():
        if isinstance(names, list):
            names = dict.fromkeys(names)
        if not isinstance(names, dict):
            raise bad(f"{slug}: a list of variable names, or {{name: [hosts]}}")
        grants[slug] = {}
        for env, hosts in names.items():
            if not isinstance(env, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env):
                raise bad(f"{slug}: {env!r} is not an environment variable name")
            if _OPERATOR_SECRET_REFUSED.match(env):
                raise bad(f"{slug}: {env} is the server's own configuration; never grant it")
            try:
                grants[slug][env] = None if hosts is None else host_patterns_normalize(hosts)
            except ValueError as exc:
                raise bad(f"{slug}.{env}: {exc}") from None
    return grants


AUXOT_OPERATOR_SECRETS = env_operator_secrets("AUXOT_OPERATOR_SECRETS")

# --- Callbacks ----------------------------------------------------------------------------
# Seconds to wait before each attempt of a callback delivery (the first is "at once").
# Length = the maximum number of attempts. Each delay gets +/- AUXOT_CALLBACK_JITTER.
try:
    AUXOT_CALLBACK_RETRY_SCHEDULE = [
        float(part) for part in env_list(
            "AUXOT_CALLBACK_RETRY_SCHEDULE", ["0", "5", "300", "1800", "7200", "18000", "36000",
                                              "36000"])
    ]
except ValueError:
    raise ImproperlyConfigured(
        "AUXOT_CALLBACK_RETRY_SCHEDULE must be comma-separated seconds, e.g. 0,5,300") from None
if not AUXOT_CALLBACK_RETRY_SCHEDULE or min(AUXOT_CALLBACK_RETRY_SCHEDULE) < 0:
    raise ImproperlyConfigured("AUXOT_CALLBACK_RETRY_SCHEDULE needs at least one delay >= 0.")
if not all(map(math.isfinite, AUXOT_CALLBACK_RETRY_SCHEDULE)):
    raise ImproperlyConfigured("AUXOT_CALLBACK_RETRY_SCHEDULE: every delay is a finite number "
                               "of seconds.")
AUXOT_CALLBACK_JITTER = env_float("AUXOT_CALLBACK_JITTER", 0.1)
if AUXOT_CALLBACK_JITTER > 1:
    raise ImproperlyConfigured("AUXOT_CALLBACK_JITTER is a fraction between 0 and 1.")
# A receiver's whole answer must come within this. Short on purpose (as Shopify's 5 s, shorter
# than GitHub's 10 s): a receiver should answer at once and queue slow work, and a hanging one
# then delays its own item's next attempt by 5 s, not 15.
AUXOT_CALLBACK_TIMEOUT_SECONDS = env_float("AUXOT_CALLBACK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# A receiver's Retry-After is honoured up to this many seconds.
AUXOT_CALLBACK_RETRY_AFTER_MAX_SECONDS = env_int(
    "AUXOT_CALLBACK_RETRY_AFTER_MAX_SECONDS", 3600, minimum=0)
# After a secret rotation, deliveries carry the old and the new signature this long.
AUXOT_CALLBACK_SECRET_ROTATION_HOURS = env_float("AUXOT_CALLBACK_SECRET_ROTATION_HOURS", 24.0)
# Callbacks use https:// only unless this allows plain http:// (http steps and agent
# providers may use either: the outbound address policy is what protects).
AUXOT_CALLBACK_ALLOW_HTTP = env_bool("AUXOT_CALLBACK_ALLOW_HTTP", False)
# Who sends deliveries: "dispatcher" (a thread pool in each qcluster main process, or
# `manage.py callbacks`; never a step worker) or "tasks" (django-q2 tasks in the step
# workers: the old path, kept as a fallback).
AUXOT_CALLBACK_DELIVERY = env_str("AUXOT_CALLBACK_DELIVERY", "dispatcher")
if AUXOT_CALLBACK_DELIVERY not in ("dispatcher", "tasks"):
    raise ImproperlyConfigured("AUXOT_CALLBACK_DELIVERY must be 'dispatcher' or 'tasks'.")
# Concurrent attempts per dispatcher (sender threads: each attempt is I/O, and they hold
# no database connection). 0 in qcluster: this cluster sends no callbacks (run
# `manage.py callbacks` elsewhere).
AUXOT_CALLBACK_THREADS = env_int("AUXOT_CALLBACK_THREADS", 64, minimum=0)
# How much lower the dispatcher's threads run than the rest of the process (Linux nice,
# 0-19): on a host whose CPU is saturated, steps get most of the CPU and callbacks wait for theirs
# (a callback is a notification; the work is the product); on a host with CPU to spare it
# changes nothing. 0: the same priority as the steps.
AUXOT_CALLBACK_NICE = env_int("AUXOT_CALLBACK_NICE", 5, minimum=0)
if AUXOT_CALLBACK_NICE > 19:
    raise ImproperlyConfigured("AUXOT_CALLBACK_NICE is a nice increment from 0 to 19.")
# Attempts one dispatcher sends at once to one endpoint (scheme, host, port, organization).
AUXOT_CALLBACK_PER_HOST_CONCURRENCY = env_int("AUXOT_CALLBACK_PER_HOST_CONCURRENCY", 4,
                                              minimum=1)
# The circuit breaker: after this many consecutive failed attempts to one endpoint, it opens
# for AUXOT_CALLBACK_BREAKER_SECONDS (doubling per failed probe, up to the max); then one
# probe attempt at a time decides whether it closes. 0 = no breaker. A receiver that fails
# half its requests also fails ten in a row now and then (0.45^10: once in ~3,000 attempts),
# twenty almost never (once in ~9 million); a dead one fails twenty in a row at once. The
# first pause is short for the same reason; a dead one is paused 5, 10, 20, ... up to 600 s.
AUXOT_CALLBACK_BREAKER_FAILURES = env_int("AUXOT_CALLBACK_BREAKER_FAILURES", 20, minimum=0)
AUXOT_CALLBACK_BREAKER_SECONDS = env_float("AUXOT_CALLBACK_BREAKER_SECONDS", 5.0, minimum=0.1)
AUXOT_CALLBACK_BREAKER_MAX_SECONDS = env_float("AUXOT_CALLBACK_BREAKER_MAX_SECONDS", 600.0,
                                               minimum=0.1)
# Where PostgreSQL's NOTIFY is unavailable (SQLite), how often the dispatcher looks for
# deliveries that came due; on PostgreSQL, the longest it sleeps without a look.
AUXOT_CALLBACK_POLL_SECONDS = env_float("AUXOT_CALLBACK_POLL_SECONDS", 0.25, minimum=0.01)
# `manage.py callbacks` after SIGTERM/SIGINT: how long in-flight attempts get to finish
# (qcluster's dispatcher uses AUXOT_WORKER_GRACE_SECONDS).
AUXOT_CALLBACK_GRACE_SECONDS = env_float("AUXOT_CALLBACK_GRACE_SECONDS", 20.0, minimum=0.0)

# --- Replay of failed work ------------------------------------------------------------------
# Failed items a bulk-replay task takes forward per transaction (each chunk commits its new
# items with the batch's cursor: a crash repeats nothing).
AUXOT_REPLAY_CHUNK_SIZE = env_int("AUXOT_REPLAY_CHUNK_SIZE", 100, minimum=1)
# A running bulk replay with no progress for this long is handed to a worker again.
AUXOT_REPLAY_STALL_SECONDS = env_int("AUXOT_REPLAY_STALL_SECONDS", 30, minimum=1)
# The admin's Failed work view looks back this many days by default.
# At most the Failed work page's longest choice (workflows/admin_replay.py MAX_DAYS): a longer
# default view would read further back than any choice the page offers.
AUXOT_REPLAY_FAILED_DAYS = env_int("AUXOT_REPLAY_FAILED_DAYS", 7, minimum=1, maximum=90)

# --- Admin and audit ----------------------------------------------------------------------
# `intake.rejected` audit rows older than this are pruned (hourly, by a django-q2 schedule);
# every other audit row is kept forever.
AUXOT_AUDIT_REJECTED_RETENTION_DAYS = env_int("AUXOT_AUDIT_REJECTED_RETENTION_DAYS", 30,
                                              minimum=1)
# intake.rejected audit rows per web process per minute (all sources, and per IP + reason);
# beyond that rejections are counted and the count is written with the next row.
AUXOT_REJECTION_AUDIT_PER_MINUTE = env_int("AUXOT_REJECTION_AUDIT_PER_MINUTE", 120, minimum=0)
AUXOT_REJECTION_AUDIT_PER_SOURCE = env_int("AUXOT_REJECTION_AUDIT_PER_SOURCE", 10, minimum=0)

# --- Operations: health and readiness, metrics, retention -----------------------------------
# /readyz and `manage.py health`: each check's time limit, the oldest worker heartbeat and
# the oldest due-but-unclaimed work item that still count as ready.
AUXOT_READY_CHECK_TIMEOUT_SECONDS = env_float("AUXOT_READY_CHECK_TIMEOUT_SECONDS", 2.0,
                                              minimum=0.05)
AUXOT_READY_HEARTBEAT_MAX_AGE_SECONDS = env_int("AUXOT_READY_HEARTBEAT_MAX_AGE_SECONDS", 60,
                                                minimum=1)
AUXOT_READY_BACKLOG_MAX_AGE_SECONDS = env_int("AUXOT_READY_BACKLOG_MAX_AGE_SECONDS", 300,
                                              minimum=1)
# prometheus-client's multiprocess mode writes one file per process into this directory:
# missing, every request (and every task) would fail on its first metric.
_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _multiproc_dir and not (os.path.isdir(_multiproc_dir)
                           and os.access(_multiproc_dir, os.W_OK | os.X_OK)):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={_multiproc_dir!r} is not a directory this process can "
        "write: create it (one per host, shared by gunicorn and qcluster) before they start.")
# The proxies in front (CIDRs, or * for any peer): from them the caller's address is read from
# X-Forwarded-For (audit rows, rejection budgets); from anyone else the header is ignored.
# Defaults to gunicorn's own list of trusted proxies, so one setting covers both.
AUXOT_TRUSTED_PROXIES = env_trusted_proxies()
# Which header those proxies write the chain into: X-Forwarded-For (nginx, HAProxy's
# `option forwardfor`, cloud load balancers) or Forwarded (RFC 7239: HAProxy's `option
# forwarded`, some ingresses). Only that one is read; the other is the caller's own say.
AUXOT_FORWARDED_HEADER = env_forwarded_header("AUXOT_FORWARDED_HEADER")
# /metrics is off unless a bearer token or an allow-list of networks is set (both: both apply).
AUXOT_METRICS_TOKEN = env_str("AUXOT_METRICS_TOKEN").strip()
AUXOT_METRICS_ALLOWED_NETWORKS = env_networks("AUXOT_METRICS_ALLOWED_NETWORKS")
if AUXOT_METRICS_TOKEN and len(AUXOT_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("AUXOT_METRICS_TOKEN must be at least 16 characters.")
# Retention defaults (an intake may set its own): inputs, outputs and step results of
# finished work items are redacted after this many days; the items are deleted after the
# second. 0 switches that stage off.
AUXOT_RETENTION_PAYLOAD_DAYS = env_int("AUXOT_RETENTION_PAYLOAD_DAYS", 30, minimum=0)
AUXOT_RETENTION_DELETE_DAYS = env_int("AUXOT_RETENTION_DELETE_DAYS", 90, minimum=0)
# The retention schedule's period, and the rows one statement redacts or deletes.
AUXOT_RETENTION_EVERY_MINUTES = env_int("AUXOT_RETENTION_EVERY_MINUTES", 60, minimum=1)
AUXOT_RETENTION_BATCH = env_int("AUXOT_RETENTION_BATCH", 500, minimum=1)

# --- Logging ------------------------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line (time, level, event, request_id, intake_id,
# work_id, key_lookup_id, status, duration_ms); text (the default) for people. The context
# filter adds the ids of the request or work item being handled to every line.
LOG_FORMAT = env_str("LOG_FORMAT", "text").strip().lower() or "text"
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be text or json.")
# One log line per HTTP request (method, path, status, duration, ids) from the web process.
AUXOT_REQUEST_LOG = env_bool("AUXOT_REQUEST_LOG", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "auxot.logs.ContextFilter"}},
    "formatters": {
        # One record, one line: a control character a caller sent is written escaped.
        "plain": {"class": "auxot.logs.TextFormatter",
                  "format": "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"},
        "json": {"()": "auxot.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["context"],
                             "formatter": "json" if LOG_FORMAT == "json" else "plain"}},
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
    "loggers": {
        # django-q2 logs an INFO line per task: keep the hot path quiet.
        "django-q": {"level": env_log_level("Q_LOG_LEVEL", "WARNING")},
        # Django logs a WARNING line per 4xx: a flood of bad requests would flood the log.
        # Rejections at the intake endpoints are audited (budgeted) instead; 5xx still log.
        "django.request": {"level": env_log_level("REQUEST_LOG_LEVEL", "ERROR")},
    },
}
