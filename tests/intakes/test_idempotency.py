"""Idempotency-Key on the trigger: replay, conflict, in-flight, scoping, expiry, races."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
import time_machine
from django.db import connection, transaction
from django.utils import timezone

from apikeys.services import apikey_issue
from intakes.idempotency import idempotency_prune
from intakes.models import IdempotencyKey
from intakes.services import intake_trigger
from tests.conftest import trigger
from workflows.models import WorkItem


def _post(api, intake, token, body=None, key="order-42"):
    return trigger(api, intake.pk, token, body=body, HTTP_IDEMPOTENCY_KEY=key)


def test_same_key_same_body_replays_original_202(api, intake_a, member_token):
    first = _post(api, intake_a, member_token, {"n": 1})
    WorkItem.objects.update(status="completed")
    again = _post(api, intake_a, member_token, {"n": 1})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()  # the original body: still "pending"
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    # README: a counted 202 carries RateLimit-*, a replay (not counted) none.
    assert "RateLimit-Limit" in first and "RateLimit-Limit" not in again
    assert again["Location"] == first["Location"]
    assert WorkItem.objects.count() == 1


def test_body_is_compared_as_json_value_not_bytes(api, intake_a, member_token):
    headers = {"HTTP_IDEMPOTENCY_KEY": "k", "HTTP_AUTHORIZATION": f"Bearer {member_token}"}
    url = f"/v1/intake/{intake_a.pk}"
    one = api.post(url, data='{"a": 1, "b": 2}', content_type="application/json", **headers)
    two = api.post(url, data='{"b":2,"a":1}', content_type="application/json", **headers)
    assert two.json()["work_id"] == one.json()["work_id"]


def test_same_key_different_body_gets_422(api, intake_a, member_token):
    _post(api, intake_a, member_token, {"n": 1})
    response = _post(api, intake_a, member_token, {"n": 2})
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_key_reused"
    assert WorkItem.objects.count() == 1


def test_key_is_scoped_to_owner_and_intake(api, cast, intake_a, member_token, workflow_a):
    from intakes.services import intake_create

    admin_token = apikey_issue(org=cast.org_a, label="admin", user=cast.admin_a).token
    other_intake = intake_create(org=cast.org_a, workflow=workflow_a, name="other")
    ids = {_post(api, intake_a, member_token).json()["work_id"],
           _post(api, intake_a, admin_token).json()["work_id"],
           _post(api, other_intake, member_token).json()["work_id"]}
    assert len(ids) == 3


def test_another_key_of_the_same_owner_replays(api, cast, intake_a, member_token):
    second = apikey_issue(org=cast.org_a, label="rotated", user=cast.member_a).token
    assert (_post(api, intake_a, member_token).json()["work_id"]
            == _post(api, intake_a, second).json()["work_id"])


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_invalid_idempotency_key_gets_400_and_stores_nothing(api, intake_a, member_token, value):
    response = _post(api, intake_a, member_token, key=value)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert not WorkItem.objects.exists() and not IdempotencyKey.objects.exists()


def test_rejected_request_stores_nothing_under_the_key(api, intake_a, member_token, cast):
    outsider = apikey_issue(org=cast.org_b, label="o", user=cast.outsider_b).token
    assert _post(api, intake_a, outsider).status_code == 404
    bad = api.post(f"/v1/intake/{intake_a.pk}", data="{", content_type="application/json",
                   HTTP_AUTHORIZATION=f"Bearer {member_token}", HTTP_IDEMPOTENCY_KEY="order-42")
    assert bad.status_code == 400
    assert not IdempotencyKey.objects.exists()
    assert _post(api, intake_a, member_token).status_code == 202  # the key is still free
    assert "Idempotent-Replayed" not in _post(api, intake_a, member_token, key="other")


def test_rate_limited_request_stores_nothing_under_the_key(api, intake_a, member_token,
                                                           one_rate_limit_window):
    settings = one_rate_limit_window
    settings.AUXOT_RATE_LIMIT_KEY = 1
    _post(api, intake_a, member_token, key="a")
    assert _post(api, intake_a, member_token, key="b").status_code == 429
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["a"]


def test_expired_key_is_free_again_and_pruned(api, intake_a, member_token, settings):
    first = _post(api, intake_a, member_token).json()["work_id"]
    later = timezone.now() + timedelta(hours=settings.AUXOT_IDEMPOTENCY_TTL_HOURS, minutes=1)
    with time_machine.travel(later):
        second = _post(api, intake_a, member_token).json()["work_id"]
        assert second != first
        _post(api, intake_a, member_token, key="old-one")
    with time_machine.travel(later + timedelta(hours=25)):
        assert idempotency_prune(now=timezone.now()) == 2
    assert not IdempotencyKey.objects.exists()


def test_records_are_kept_at_least_24_hours(api, intake_a, member_token):
    _post(api, intake_a, member_token)
    with time_machine.travel(timezone.now() + timedelta(hours=23, minutes=59)):
        assert idempotency_prune(now=timezone.now()) == 0  # rate windows may go
        assert _post(api, intake_a, member_token)["Idempotent-Replayed"] == "true"


def test_winner_rolled_back_between_conflict_and_lookup_gets_409(intake_a, cast, monkeypatch):
    """The unique index said "taken" but the winner is gone: a retry will succeed."""
    from intakes import idempotency

    key = apikey_issue(org=cast.org_a, label="k", user=cast.member_a).key
    intake_trigger(intake=intake_a, key=key, payload={}, ip=None, idempotency_key="x")
    monkeypatch.setattr(idempotency, "idempotency_winner", lambda **kw: None)
    with pytest.raises(idempotency.ApplicationError) as raised:
        intake_trigger(intake=intake_a, key=key, payload={}, ip=None, idempotency_key="x")
    assert raised.value.status == 409 and raised.value.headers == {"Retry-After": "1"}


@pytest.fixture
def live(live_server, cast, intake_a):
    token = apikey_issue(org=cast.org_a, label="live", user=cast.member_a).token
    return f"{live_server.url}/v1/intake/{intake_a.pk}", token


def _live_post(url, token, key, body):
    return requests.post(url, json=body, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": key})


@pytest.mark.django_db(transaction=True)
def test_in_flight_twin_gets_409_with_retry_after_then_replays(live, intake_a, cast,
                                                               settings):
    """A first request holds the key uncommitted; the twin must not wait forever."""
    url, token = live
    key = apikey_issue(org=cast.org_a, label="holder", user=cast.member_a).key
    settings.AUXOT_IDEMPOTENCY_WAIT_MS = 300
    # A request commits its rate counts before the item's statement; this holder's outer
    # transaction would keep them locked instead, which no request does.
    settings.AUXOT_RATE_LIMIT_KEY = settings.AUXOT_RATE_LIMIT_INTAKE = 0
    settings.AUXOT_RATE_LIMIT_ORG = 0
    holding, release, done = threading.Event(), threading.Event(), {}

    def hold_open():
        with transaction.atomic():
            done["item"] = intake_trigger(intake=intake_a, key=key, payload={"n": 1}, ip=None,
                                          idempotency_key="slow").item
            holding.set()
            release.wait(30)
        connection.close()

    holder = threading.Thread(target=hold_open)
    holder.start()
    assert holding.wait(30)
    if connection.vendor != "postgresql":
        threading.Timer(0.5, release.set).start()  # one writer: the twin waits for this
    try:
        twin = _live_post(url, token, "slow", {"n": 1})
    finally:
        release.set()
        holder.join()
    if connection.vendor == "postgresql":
        assert twin.status_code == 409
        assert twin.headers["Retry-After"] == "1"
        assert twin.json()["code"] == "idempotency_in_flight"
    else:  # SQLite has one writer: the twin waited for the commit and replays it
        assert twin.status_code == 202 and twin.headers["Idempotent-Replayed"] == "true"
    retry = _live_post(url, token, "slow", {"n": 1})
    assert retry.status_code == 202 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["work_id"] == str(done["item"].pk)
    assert WorkItem.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_50_concurrent_identical_posts_make_one_work_item(live):
    url, token = live

    def until_accepted(_):
        for _attempt in range(50):
            response = _live_post(url, token, "burst-1", {"order": 7})
            if response.status_code == 202:
                return response
            assert response.status_code in (409, 503), response.text  # retryable only
            assert int(response.headers["Retry-After"]) >= 1
        raise AssertionError("never accepted")

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(until_accepted, range(50)))
    assert len({answer.json()["work_id"] for answer in answers}) == 1
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert WorkItem.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
