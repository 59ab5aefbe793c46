"""Rate limits on accepted triggers: per API key, per intake and per organization, fixed
windows.

One statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING, PostgreSQL and SQLite
3.35+) bumps every counter as the last statement of the trigger's transaction. The row
lock serializes concurrent callers of one key only for the commit itself, and the counter
is exact: a request over the limit rolls back, so its increment, item and queue entry
vanish together. The database holds the counter even with REDIS_URL: it is one statement
in a commit that happens anyway, not a second round trip.

Fixed window (AUXOT_RATE_LIMIT_WINDOW_SECONDS, aligned to the epoch): a caller can get up
to 2x the limit across a window boundary; the RateLimit-* headers say when it resets.
"""

import math
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection

from apikeys.models import ApiKey
from auxot.errors import ApplicationError
from intakes.models import Intake, RateLimitBucket


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset: int  # seconds until the window ends

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


SCOPE_NAMES = {"key": "this API key", "intake": "this intake", "org": "this organization"}


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


def _upsert_sql(n: int) -> str:
    table = connection.ops.quote_name(RateLimitBucket._meta.db_table)
    values = ", ".join(["(%s, %s, 1)"] * n)
    # Only our table name and placeholders are interpolated; values are parameters.
    sql = f'INSERT INTO {table} (scope, window_start, "count") VALUES {values} '
    sql += f'ON CONFLICT (scope, window_start) DO UPDATE SET "count" = {table}."count" + 1 '
    return sql + 'RETURNING scope, "count"'


def ratelimit_consume(*, intake: Intake, key: ApiKey, now: datetime) -> RateLimitState | None:
    """Count one accepted trigger; raise a 429 ApplicationError when a limit is exceeded.

    Call inside the trigger's transaction, last: the raise rolls the increment back.
    """
    scopes = ratelimit_scopes(intake=intake, key=key)
    if not scopes:
        return None
    window = settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS
    timestamp = now.timestamp()
    start = int(timestamp // window * window)
    reset = max(1, math.ceil(start + window - timestamp))
    params: list = []
    for scope in sorted(scopes):  # one lock order for every caller: no deadlocks
        params += [scope, start]
    with connection.cursor() as cursor:
        cursor.execute(_upsert_sql(len(scopes)), params)
        counts = dict(cursor.fetchall())
    states = {scope: RateLimitState(limit=limit, remaining=max(0, limit - counts[scope]),
                                    reset=reset) for scope, limit in scopes.items()}
    over = [scope for scope, limit in scopes.items() if counts[scope] > limit]
    # The most restrictive scope speaks: the one over its limit (the smallest, if several),
    # else the one with the fewest triggers left.
    tightest = min(over or states, key=lambda scope: (states[scope].remaining, scopes[scope]))
    state = states[tightest]
    if over:
        what = SCOPE_NAMES[tightest.split(":", 1)[0]]
        raise ApplicationError(
            f"Rate limit of {scopes[tightest]} triggers per {window} s exceeded for {what}; "
            f"retry in {reset} s.",
            code="rate_limited", headers={"Retry-After": str(reset), **state.headers()},
        )
    return state


def ratelimit_prune(*, now: datetime) -> int:
    horizon = now.timestamp() - 2 * settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS
    return RateLimitBucket.objects.filter(window_start__lt=horizon).delete()[0]
