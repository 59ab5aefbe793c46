"""Rate limits per API key, per intake and per organization: atomic counters, 429 with
RateLimit headers."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
import time_machine

from apikeys.services import apikey_issue
from intakes.models import RateLimitBucket
from intakes.services import intake_create
from tests.conftest import GREETING, make_workflow, trigger
from workflows.models import WorkItem


@pytest.fixture
def limits(settings):
    settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 60
    settings.AUXOT_RATE_LIMIT_KEY = 3
    settings.AUXOT_RATE_LIMIT_INTAKE = 0
    settings.AUXOT_RATE_LIMIT_ORG = 0
    return settings


WINDOW_START = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def test_success_carries_ratelimit_headers(api, intake_a, member_token, limits):
    with time_machine.travel(WINDOW_START + timedelta(seconds=15), tick=False):
        response = trigger(api, intake_a.pk, member_token)
    assert response.status_code == 202
    assert response["RateLimit-Limit"] == "3"
    assert response["RateLimit-Remaining"] == "2"
    assert response["RateLimit-Reset"] == "45"


def test_key_over_limit_gets_429_problem_with_retry_after(api, intake_a, member_token, limits):
    with time_machine.travel(WINDOW_START + timedelta(seconds=50), tick=False):
        for _ in range(3):
            assert trigger(api, intake_a.pk, member_token).status_code == 202
        response = trigger(api, intake_a.pk, member_token)
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "rate_limited"
    assert response["Retry-After"] == "10"
    assert (response["RateLimit-Limit"], response["RateLimit-Remaining"],
            response["RateLimit-Reset"]) == ("3", "0", "10")
    assert WorkItem.objects.count() == 3  # the rejected trigger left nothing behind


def test_rejected_requests_do_not_use_up_the_window(api, intake_a, member_token, limits):
    with time_machine.travel(WINDOW_START, tick=False):
        for _ in range(3):
            trigger(api, intake_a.pk, member_token)
        for _ in range(5):
            assert trigger(api, intake_a.pk, member_token).status_code == 429
        assert RateLimitBucket.objects.get(scope__startswith="key:").count == 3


def test_next_window_accepts_again(api, intake_a, member_token, limits):
    with time_machine.travel(WINDOW_START, tick=False):
        for _ in range(4):
            trigger(api, intake_a.pk, member_token)
    with time_machine.travel(WINDOW_START + timedelta(seconds=60), tick=False):
        assert trigger(api, intake_a.pk, member_token).status_code == 202


def test_limit_is_per_key(api, cast, intake_a, member_token, limits):
    other = apikey_issue(org=cast.org_a, label="other", user=cast.member_a).token
    with time_machine.travel(WINDOW_START, tick=False):
        for _ in range(3):
            trigger(api, intake_a.pk, member_token)
        assert trigger(api, intake_a.pk, other).status_code == 202


def test_intake_override_limits_all_keys_together(api, cast, intake_a, member_token, limits):
    limits.AUXOT_RATE_LIMIT_KEY = 0
    intake_a.rate_limit_per_window = 2
    intake_a.save()
    other = apikey_issue(org=cast.org_a, label="other", user=cast.admin_a).token
    with time_machine.travel(WINDOW_START, tick=False):
        assert trigger(api, intake_a.pk, member_token).status_code == 202
        assert trigger(api, intake_a.pk, other).status_code == 202
        response = trigger(api, intake_a.pk, other)
    assert response.status_code == 429
    assert "this intake" in response.json()["detail"]


def test_intake_override_zero_switches_the_limit_off(api, intake_a, member_token, limits):
    limits.AUXOT_RATE_LIMIT_KEY = 0
    limits.AUXOT_RATE_LIMIT_INTAKE = 1
    intake_a.rate_limit_per_window = 0
    intake_a.save()
    with time_machine.travel(WINDOW_START, tick=False):
        assert [trigger(api, intake_a.pk, member_token).status_code for _ in range(3)] == [202] * 3
        assert not RateLimitBucket.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_burst_of_twice_the_limit_from_20_clients_accepts_at_most_the_limit(
        live_server, cast, intake_a, settings):
    """DRF's cache throttle reads then writes and is overrun here; the upsert is not."""
    limit = 60
    settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 3600  # the burst never spans two windows
    settings.AUXOT_RATE_LIMIT_KEY = limit
    token = apikey_issue(org=cast.org_a, label="burst", user=cast.member_a).token
    url = f"{live_server.url}/v1/intake/{intake_a.pk}"
    session_headers = {"Authorization": f"Bearer {token}"}

    def client(n):
        with requests.Session() as session:
            return [session.post(url, json={"i": i}, headers=session_headers,
                                 timeout=60).status_code for i in range(n)]

    with (time_machine.travel(WINDOW_START + timedelta(seconds=10)),
          ThreadPoolExecutor(max_workers=20) as pool):
        codes = [code for batch in pool.map(client, [2 * limit // 20] * 20) for code in batch]
    assert len(codes) == 2 * limit
    assert set(codes) <= {202, 429}
    assert codes.count(202) <= limit * 1.01
    assert codes.count(202) == WorkItem.objects.count()
    assert codes.count(202) == limit  # nothing else limits this burst: exactly the limit


def test_intake_override_is_editable_in_the_admin(admin_client, intake_a):
    page = admin_client.get(f"/admin/intakes/intake/{intake_a.pk}/change/")
    assert page.status_code == 200
    assert b'name="rate_limit_per_window"' in page.content


# --- the organization-wide limit: all intakes and all keys of one org together ---------
@pytest.fixture
def org_limit(limits, cast):
    limits.AUXOT_RATE_LIMIT_KEY = 0
    cast.org_a.rate_limit_per_window = 3
    cast.org_a.save()
    return limits


def test_org_limit_spans_intakes_and_keys(api, cast, intake_a, workflow_a, member_token,
                                          org_limit):
    second = intake_create(org=cast.org_a, workflow=workflow_a, name="second")
    admin_token = apikey_issue(org=cast.org_a, label="admin", user=cast.admin_a).token
    with time_machine.travel(WINDOW_START + timedelta(seconds=20), tick=False):
        assert trigger(api, intake_a.pk, member_token).status_code == 202
        assert trigger(api, second.pk, admin_token).status_code == 202
        last = trigger(api, second.pk, member_token)
        response = trigger(api, intake_a.pk, admin_token)
    assert last.status_code == 202
    assert (last["RateLimit-Limit"], last["RateLimit-Remaining"]) == ("3", "0")
    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"
    assert "this organization" in response.json()["detail"]
    assert response["Retry-After"] == "40"
    assert (response["RateLimit-Limit"], response["RateLimit-Remaining"],
            response["RateLimit-Reset"]) == ("3", "0", "40")
    assert WorkItem.objects.count() == 3


def test_org_limit_does_not_touch_other_orgs(api, cast, intake_a, member_token,
                                             outsider_token, org_limit):
    workflow_b = make_workflow(cast.org_b, [("transform", {"expression": GREETING})], name="B")
    intake_b = intake_create(org=cast.org_b, workflow=workflow_b, name="B")
    with time_machine.travel(WINDOW_START, tick=False):
        for _ in range(3):
            trigger(api, intake_a.pk, member_token)
        assert trigger(api, intake_a.pk, member_token).status_code == 429
        assert trigger(api, intake_b.pk, outsider_token).status_code == 202


def test_org_default_comes_from_the_setting_and_the_org_value_wins(api, cast, intake_a,
                                                                    member_token, limits):
    limits.AUXOT_RATE_LIMIT_KEY = 0
    limits.AUXOT_RATE_LIMIT_ORG = 2
    with time_machine.travel(WINDOW_START, tick=False):
        assert [trigger(api, intake_a.pk, member_token).status_code
                for _ in range(3)] == [202, 202, 429]
        cast.org_a.rate_limit_per_window = 0  # switched off for this org only
        cast.org_a.save()
        assert trigger(api, intake_a.pk, member_token).status_code == 202
        cast.org_a.rate_limit_per_window = 10
        cast.org_a.save()
        response = trigger(api, intake_a.pk, member_token)
    assert response["RateLimit-Limit"] == "10"


def test_most_restrictive_scope_drives_the_headers(api, cast, intake_a, member_token, limits):
    limits.AUXOT_RATE_LIMIT_KEY = 10
    limits.AUXOT_RATE_LIMIT_INTAKE = 50
    cast.org_a.rate_limit_per_window = 4
    cast.org_a.save()
    with time_machine.travel(WINDOW_START, tick=False):
        response = trigger(api, intake_a.pk, member_token)
        assert (response["RateLimit-Limit"], response["RateLimit-Remaining"]) == ("4", "3")
        cast.org_a.rate_limit_per_window = 100
        cast.org_a.save()
        response = trigger(api, intake_a.pk, member_token)
    assert (response["RateLimit-Limit"], response["RateLimit-Remaining"]) == ("10", "8")


def test_org_limit_adds_no_query(api, cast, intake_a, member_token, limits):
    from tests.intakes.test_intake_trigger import _accept_statements, _captured

    limits.AUXOT_RATE_LIMIT_ORG = 100
    limits.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 10**9  # both triggers count in one window
    trigger(api, intake_a.pk, member_token)  # first use touches last_used_at
    # as tests/intakes/test_intake_trigger.py pins it: every counter in one upsert
    assert _captured(lambda: trigger(api, intake_a.pk, member_token)) == _accept_statements()
    assert RateLimitBucket.objects.filter(scope=f"org:{cast.org_a.pk}").get().count == 2


@pytest.mark.django_db(transaction=True)
def test_burst_of_twice_the_org_limit_over_two_keys_and_intakes_accepts_exactly_it(
        live_server, cast, intake_a, workflow_a, settings):
    limit = 60
    settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 3600  # the burst never spans two windows
    settings.AUXOT_RATE_LIMIT_KEY = settings.AUXOT_RATE_LIMIT_INTAKE = 0
    cast.org_a.rate_limit_per_window = limit
    cast.org_a.save()
    second = intake_create(org=cast.org_a, workflow=workflow_a, name="second")
    tokens = [apikey_issue(org=cast.org_a, label=f"k{n}", user=user).token
              for n, user in enumerate([cast.member_a, cast.admin_a])]

    def client(n):
        url = f"{live_server.url}/v1/intake/{(intake_a, second)[n % 2].pk}"
        headers = {"Authorization": f"Bearer {tokens[n // 2 % 2]}"}
        with requests.Session() as session:
            return [session.post(url, json={"i": i}, headers=headers, timeout=60).status_code
                    for i in range(2 * limit // 20)]

    with (time_machine.travel(WINDOW_START + timedelta(seconds=10)),
          ThreadPoolExecutor(max_workers=20) as pool):
        codes = [code for batch in pool.map(client, range(20)) for code in batch]
    assert len(codes) == 2 * limit
    assert set(codes) <= {202, 429}
    assert codes.count(202) == limit == WorkItem.objects.count()
    assert RateLimitBucket.objects.get(scope=f"org:{cast.org_a.pk}").count == limit


# --- who may set an organization's limit: operators, never the org's own admins ---------
def test_superuser_sets_the_org_limit_in_the_admin(admin_client, cast):
    url = f"/admin/auxot/organization/{cast.org_a.pk}/change/"
    page = admin_client.get(url)
    assert b'name="rate_limit_per_window"' in page.content
    response = admin_client.post(url, {"name": cast.org_a.name, "slug": cast.org_a.slug,
                                       "plan": cast.org_a.plan, "rate_limit_per_window": "500"})
    assert response.status_code == 302
    cast.org_a.refresh_from_db()
    assert cast.org_a.rate_limit_per_window == 500


@pytest.mark.parametrize("who", ["admin_a", "member_a", "auditor_a"])
def test_org_members_cannot_change_their_orgs_limit(client, cast, who):
    client.force_login(getattr(cast, who))
    url = f"/admin/auxot/organization/{cast.org_a.pk}/change/"
    page = client.get(url)
    assert b'name="rate_limit_per_window"' not in page.content  # shown read-only at most
    response = client.post(url, {"name": cast.org_a.name, "slug": cast.org_a.slug,
                                 "plan": "enterprise", "rate_limit_per_window": "1000000"})
    assert response.status_code in (403, 404)
    cast.org_a.refresh_from_db()
    assert (cast.org_a.rate_limit_per_window, cast.org_a.plan) == (None, "business")
