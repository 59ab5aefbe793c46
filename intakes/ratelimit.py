"""Rate limits on accepted triggers: per API key, per intake and per organization, fixed
windows.

A trigger takes its counts before its item is written and gives them back when the item
is not (ratelimit_consume, then ratelimit_refund), so no counter is held across the
trigger's transaction and concurrent triggers of one intake do not queue on it:

- Redis (AUXOT_RATELIMIT_REDIS_URL; default the Redis broker's URL): one Lua script
  INCRs every scope's counter, sets its expiry, and when any scope went over its limit
  DECRs them all again, atomically. If Redis cannot be reached the database counts.
- The database: one INSERT ... ON CONFLICT DO UPDATE ... RETURNING (PostgreSQL and SQLite
  3.35+) for every scope, committed on its own (the row lock lasts that one statement);
  over a limit, one more upsert takes the increments back before the 429.

Counts stay exact: every increment is either a trigger whose item is written, or taken
back. A rejected request may briefly hold a count until its refund, which can only refuse
a concurrent request a slot that frees a moment later, never accept one too many.

Fixed window (AUXOT_RATE_LIMIT_WINDOW_SECONDS, aligned to the epoch): a caller can get up
to 2x the limit across a window boundary; the RateLimit-* headers say when it resets.
"""

import functools
import logging
import math
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection

from apikeys.models import ApiKey
from auxot.errors import ApplicationError
from intakes.models import Intake, RateLimitBucket

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset: int  # seconds until the window ends

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


@dataclass(frozen=True)
class RateLimitTicket:
    """The counts one trigger took: give them back with ratelimit_refund if its item is not
    written."""

    state: RateLimitState
    scopes: tuple[str, ...]
    window_start: int
    backend: str  # "redis" or "db"


SCOPE_NAMES = {"key": "this API key", "intake": "this intake", "org": "this organization"}
REDIS_PREFIX = "auxot:ratelimit:"

# KEYS: one counter per scope; ARGV[1]: expiry seconds, ARGV[2…]: each scope's limit.
# Returns the counts after the increment; when one is over its limit, all are taken back.
_CONSUME_LUA = """
local counts, over = {}, false
for i, name in ipairs(KEYS) do
  local count = redis.call('INCR', name)
  if count == 1 then redis.call('EXPIRE', name, ARGV[1]) end
  counts[i] = count
  if count > tonumber(ARGV[i + 1]) then over = true end
end
if over then
  for _, name in ipairs(KEYS) do redis.call('DECR', name) end
end
return counts
"""


def _own_or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def ratelimit_scopes(*, intake: Intake, key: ApiKey) -> dict[str, int]:
    """scope -> limit, for the limits that are switched on.

    The organization is the key's (the intake lookup guarantees it is the intake's too),
    loaded with the key: its override costs no query.
    """
    scopes = {
        f"key:{key.pk}": settings.AUXOT_RATE_LIMIT_KEY,
        f"intake:{intake.pk}": _own_or_default(intake.rate_limit_per_window,
                                               settings.AUXOT_RATE_LIMIT_INTAKE),
        f"org:{key.org_id}": _own_or_default(key.org.rate_limit_per_window,
                                             settings.AUXOT_RATE_LIMIT_ORG),
    }
    return {scope: limit for scope, limit in scopes.items() if limit > 0}


@functools.cache
def _redis(url: str):
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    return client, client.register_script(_CONSUME_LUA)


def _redis_key(scope: str, start: int) -> str:
    return f"{REDIS_PREFIX}{scope}:{start}"


def _redis_consume(url: str, scopes: list[str], limits: list[int], start: int,
                   window: int) -> list[int] | None:
    """The counts after the increment, or None when Redis cannot be reached."""
    import redis

    _client, script = _redis(url)
    try:
        counts = script(keys=[_redis_key(s, start) for s in scopes], args=[2 * window, *limits])
    except redis.RedisError as exc:
        # Never the URL: it may carry a password.
        logger.warning("rate limit: Redis unavailable (%s); counting in the database",
                       type(exc).__name__)
        return None
    return [int(count) for count in counts]


def _table() -> str:
    return connection.ops.quote_name(RateLimitBucket._meta.db_table)


def _upsert(scopes, start: int, *, initial: int, update: str) -> list[int]:
    """INSERT ... ON CONFLICT DO UPDATE for every scope, in sorted order (the one lock order
    of every consume and refund: no deadlocks), RETURNING the counts.

    Outside a transaction (a request) the statement is its own commit, so a counter row is
    locked for this statement only; on PostgreSQL that commit is also asynchronous
    (synchronous_commit off, set inside the statement): the item's durable commit comes
    later in the WAL and flushes it too, so every accepted trigger's count is as durable as
    its item, and the counter's commit does not wait for a disk flush while holding the row.
    """
    table = _table()
    names = sorted(scopes)
    rows = ", ".join([f"(%s, %s, {initial})"] * len(names))
    source = f"VALUES {rows}"
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        source = (f"SELECT * FROM (VALUES {rows}) AS v(scope, window_start, n) "
                  "WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL")
    # Only our table name and placeholders are interpolated; values are parameters.
    sql = (f'INSERT INTO {table} (scope, window_start, "count") {source} '
           f'ON CONFLICT (scope, window_start) DO UPDATE SET "count" = {update} '
           'RETURNING scope, "count"')
    params: list = []
    for scope in names:
        params += [scope, start]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        counts = dict(cursor.fetchall())
    return [counts[scope] for scope in scopes]


def _db_consume(scopes: list[str], start: int) -> list[int]:
    return _upsert(scopes, start, initial=1, update=f'{_table()}."count" + 1')


def _db_refund(scopes: tuple[str, ...], start: int) -> None:
    table = _table()
    _upsert(scopes, start, initial=0, update=(
        f'CASE WHEN {table}."count" > 0 THEN {table}."count" - 1 ELSE 0 END'))


def ratelimit_consume(*, intake: Intake, key: ApiKey, now: datetime) -> RateLimitTicket | None:
    """Count one trigger in every scope; raise a 429 ApplicationError (having taken the
    counts back) when a limit is exceeded. Call it before the item's transaction, outside
    any transaction, and ratelimit_refund the ticket if the item is then not written."""
    scopes = ratelimit_scopes(intake=intake, key=key)
    if not scopes:
        return None
    window = settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS
    timestamp = now.timestamp()
    start = int(timestamp // window * window)
    reset = max(1, math.ceil(start + window - timestamp))
    names = sorted(scopes)  # one lock order for every caller: no deadlocks
    limits = [scopes[name] for name in names]
    counts, backend = None, "redis"
    if settings.AUXOT_RATELIMIT_REDIS_URL:
        counts = _redis_consume(settings.AUXOT_RATELIMIT_REDIS_URL, names, limits, start, window)
    if counts is None:
        counts, backend = _db_consume(names, start), "db"
    by_scope = dict(zip(names, counts, strict=True))
    states = {scope: RateLimitState(limit=limit, remaining=max(0, limit - by_scope[scope]),
                                    reset=reset) for scope, limit in scopes.items()}
    over = [scope for scope, limit in scopes.items() if by_scope[scope] > limit]
    # The most restrictive scope speaks: the one over its limit (the smallest, if several),
    # else the one with the fewest triggers left.
    tightest = min(over or states, key=lambda scope: (states[scope].remaining, scopes[scope]))
    state = states[tightest]
    if over:
        if backend == "db":  # the script has taken Redis' counts back already
            _db_refund(tuple(names), start)
        what = SCOPE_NAMES[tightest.split(":", 1)[0]]
        raise ApplicationError(
            f"Rate limit of {scopes[tightest]} triggers per {window} s exceeded for {what}; "
            f"retry in {reset} s.",
            code="rate_limited", headers={"Retry-After": str(reset), **state.headers()},
        )
    return RateLimitTicket(state=state, scopes=tuple(names), window_start=start,
                           backend=backend)


def ratelimit_refund(ticket: RateLimitTicket | None) -> None:
    """Give back the counts of a trigger whose item was not written. Never raises: a lost
    refund leaves one count too many (a stricter limit), never one too few."""
    if ticket is None:
        return
    try:
        if ticket.backend == "redis":
            client, _script = _redis(settings.AUXOT_RATELIMIT_REDIS_URL)
            with client.pipeline(transaction=False) as pipe:
                for scope in ticket.scopes:
                    pipe.decr(_redis_key(scope, ticket.window_start))
                pipe.execute()
        else:
            _db_refund(ticket.scopes, ticket.window_start)
    except Exception as exc:  # a refund must not hide the original error
        logger.warning("rate limit: refund failed (%s)", type(exc).__name__)


def ratelimit_prune(*, now: datetime) -> int:
    horizon = now.timestamp() - 2 * settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS
    return RateLimitBucket.objects.filter(window_start__lt=horizon).delete()[0]
