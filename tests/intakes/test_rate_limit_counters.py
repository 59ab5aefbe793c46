"""Where the rate counts live: an atomic Redis counter when configured, else a database row
committed before the item's statement (never held across it) and given back when the
item is not written."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace
from unittest import mock

import pytest
import redis
import time_machine
from django.db import OperationalError, connection, connections

from apikeys.services import apikey_issue
from auxot.errors import ApplicationError
from intakes import ratelimit
from intakes.models import RateLimitBucket
from tests.conftest import trigger
from tests.tools import ToolMissing
from workflows.models import WorkItem

REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of these tests' own
NOW = datetime(2026, 11, 29, 12, 0, 10, tzinfo=UTC)


@pytest.fixture
def limits(settings):
    settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 3600
    settings.AUXOT_RATE_LIMIT_KEY = 3
    settings.AUXOT_RATE_LIMIT_INTAKE = settings.AUXOT_RATE_LIMIT_ORG = 0
    settings.AUXOT_RATELIMIT_REDIS_URL = ""
    return settings


@pytest.fixture
def redis_limits(limits):
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        raise ToolMissing(f"MISSING TOOL: no Redis at {REDIS_URL} (CI fails this skip)") from None
    for name in client.scan_iter(f"{ratelimit.REDIS_PREFIX}*"):
        client.delete(name)
    limits.AUXOT_RATELIMIT_REDIS_URL = REDIS_URL
    yield client
    for name in client.scan_iter(f"{ratelimit.REDIS_PREFIX}*"):
        client.delete(name)


def _counts(client) -> dict[str, int]:
    return {name.decode().removeprefix(ratelimit.REDIS_PREFIX).rsplit(":", 1)[0]: int(
        client.get(name)) for name in client.scan_iter(f"{ratelimit.REDIS_PREFIX}*")}


def test_redis_counts_triggers_and_the_database_holds_no_counter(api, intake_a, member_token,
                                                                  redis_limits):
    with time_machine.travel(NOW, tick=False):
        codes = [trigger(api, intake_a.pk, member_token).status_code for _ in range(5)]
        last = trigger(api, intake_a.pk, member_token)
    assert codes == [202, 202, 202, 429, 429]
    assert last["RateLimit-Remaining"] == "0" and last["Retry-After"] == "3590"
    assert WorkItem.objects.count() == 3
    assert not RateLimitBucket.objects.exists()
    [(scope, count)] = _counts(redis_limits).items()
    assert scope.startswith("key:") and count == 3  # refused requests took theirs back
    assert 3590 < redis_limits.ttl(next(redis_limits.scan_iter(
        f"{ratelimit.REDIS_PREFIX}*"))) <= 7200


def test_redis_counter_is_exact_under_a_burst_of_twice_the_limit(redis_limits, limits):
    """40 concurrent consumers, limits 20 (key) and 25 (intake): exactly 20 get through,
    and every scope's counter ends at what was accepted."""
    limits.AUXOT_RATE_LIMIT_KEY = 20
    org = SimpleNamespace(rate_limit_per_window=0)
    key = SimpleNamespace(pk="k1", org_id=1, org=org)
    intake = SimpleNamespace(pk="i1", rate_limit_per_window=25)
    start = threading.Barrier(40)

    def consume(_):
        start.wait()
        try:
            ratelimit.ratelimit_consume(intake=intake, key=key, now=NOW)
        except ApplicationError as exc:
            assert exc.code == "rate_limited"
            return False
        return True

    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(consume, range(40)))
    assert results.count(True) == 20
    assert _counts(redis_limits) == {"intake:i1": 20, "key:k1": 20}


def test_redis_refund_gives_the_counts_back(redis_limits):
    key = SimpleNamespace(pk="k2", org_id=1, org=SimpleNamespace(rate_limit_per_window=0))
    intake = SimpleNamespace(pk="i2", rate_limit_per_window=None)
    ticket = ratelimit.ratelimit_consume(intake=intake, key=key, now=NOW)
    assert ticket.backend == "redis" and _counts(redis_limits) == {"key:k2": 1}
    ratelimit.ratelimit_refund(ticket)
    assert _counts(redis_limits) == {"key:k2": 0}


def test_without_redis_the_database_counts(api, intake_a, member_token, limits, caplog):
    limits.AUXOT_RATELIMIT_REDIS_URL = "redis://127.0.0.1:18199/0"  # nothing listens
    ratelimit._redis.cache_clear()
    with time_machine.travel(NOW, tick=False):
        codes = [trigger(api, intake_a.pk, member_token).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    assert RateLimitBucket.objects.get(scope__startswith="key:").count == 3
    assert "Redis unavailable" in caplog.text and "18199" not in caplog.text


def test_a_failed_item_write_gives_the_database_counts_back(api, intake_a, member_token,
                                                            limits):
    with time_machine.travel(NOW, tick=False):
        assert trigger(api, intake_a.pk, member_token).status_code == 202
        with mock.patch("intakes.services.work_item_accept_write",
                        side_effect=OperationalError("the server closed the connection")):
            assert trigger(api, intake_a.pk, member_token).status_code == 503
        assert RateLimitBucket.objects.get(scope__startswith="key:").count == 1
        assert trigger(api, intake_a.pk, member_token)["RateLimit-Remaining"] == "1"
    assert WorkItem.objects.count() == 2


def test_a_lost_idempotency_race_gives_the_counts_back(api, intake_a, member_token, limits):
    with time_machine.travel(NOW, tick=False):
        first = trigger(api, intake_a.pk, member_token, HTTP_IDEMPOTENCY_KEY="once")
        again = trigger(api, intake_a.pk, member_token, HTTP_IDEMPOTENCY_KEY="once")
    assert again.json()["work_id"] == first.json()["work_id"]
    assert RateLimitBucket.objects.get(scope__startswith="key:").count == 1


@pytest.mark.django_db(transaction=True)
def test_the_counter_row_is_not_held_while_the_item_is_written(api, cast, intake_a, limits):
    """PostgreSQL: while the item's statement runs, another connection may lock the
    counter row at once (NOWAIT): it was committed before, not held to the trigger's end."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL only")
    token = apikey_issue(org=cast.org_a, label="hot", user=cast.member_a).token
    from intakes import accept

    seen = {}
    real = accept.work_item_accept_write

    def probe(**kwargs):
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute('SELECT "count" FROM intakes_ratelimitbucket '
                               "WHERE scope LIKE 'key:%%' FOR UPDATE NOWAIT")
                seen["count"] = cursor.fetchone()[0]
                cursor.execute("ROLLBACK")
        finally:
            other.close()
        return real(**kwargs)

    with mock.patch("intakes.services.work_item_accept_write", side_effect=probe):
        assert trigger(api, intake_a.pk, token).status_code == 202
    assert seen == {"count": 1}
