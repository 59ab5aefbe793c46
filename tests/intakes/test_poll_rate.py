"""Polls per key and per organization per web process (intakes/pollrate.py): a loop that
polls without pause gets 429 with Retry-After; other keys and organizations are served."""

import pytest

from apikeys.services import apikey_issue
from intakes import pollrate
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow, trigger


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _poll(api, intake, token, work_id):
    return api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(token))


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(pollrate, "_clock", fake)
    return fake


def test_a_key_polling_past_its_rate_gets_429_and_others_are_served(
        api, settings, clock, cast, intake_a, member_token):
    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 2, 100
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    burst = int(2 * pollrate.BURST_SECONDS)
    assert [_poll(api, intake_a, member_token, work_id).status_code
            for _ in range(burst)] == [200] * burst
    refused = _poll(api, intake_a, member_token, work_id)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "rate_limited" and "?wait=N" in body["detail"]
    assert refused["Retry-After"] == "1"
    # Another key of the same organization still polls.
    admin_token = apikey_issue(org=cast.org_a, label="admin key", user=cast.admin_a).token
    assert _poll(api, intake_a, admin_token, work_id).status_code == 200
    clock.now += 0.5  # one token back
    assert _poll(api, intake_a, member_token, work_id).status_code == 200
    assert _poll(api, intake_a, member_token, work_id).status_code == 429


def test_an_organization_spreading_its_polls_over_keys_is_bounded_too(
        api, settings, clock, cast, intake_a, member_token, outsider_token):
    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 100, 2
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    burst = int(2 * pollrate.BURST_SECONDS)
    tokens = [apikey_issue(org=cast.org_a, label=f"k{n}", user=cast.member_a).token
              for n in range(3)]
    statuses = [_poll(api, intake_a, tokens[n % 3], work_id).status_code
                for n in range(burst + 1)]
    assert statuses == [200] * burst + [429]
    intake_b = intake_create(org=cast.org_b, workflow=make_workflow(
        cast.org_b, [("transform", {"expression": "input"})], name="B"), name="B")
    other = trigger(api, intake_b.pk, outsider_token).json()["work_id"]
    assert _poll(api, intake_b, outsider_token, other).status_code == 200  # another tenant


def test_a_refused_poll_takes_nothing_and_reads_nothing(api, settings, clock, intake_a,
                                                        member_token,
                                                        django_assert_max_num_queries):
    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 1, 1
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    for _ in range(int(pollrate.BURST_SECONDS)):
        assert _poll(api, intake_a, member_token, work_id).status_code == 200
    # The key (its lookup) and the intake.rejected row (in a savepoint): no item, intake or
    # step is read.
    with django_assert_max_num_queries(4):
        assert _poll(api, intake_a, member_token, work_id).status_code == 429
    clock.now += 1.0
    assert _poll(api, intake_a, member_token, work_id).status_code == 200


def test_zero_switches_the_limits_off(api, settings, clock, intake_a, member_token):
    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 0, 0
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    assert {_poll(api, intake_a, member_token, work_id).status_code
            for _ in range(30)} == {200}


def test_retry_after_says_when_a_token_is_back():
    buckets = pollrate._Buckets()
    limits = {("key", 1): 0.25}  # one poll every 4 s; a full bucket holds 1.25
    assert buckets.take(limits, 0.0) == 0.0
    assert buckets.take(limits, 0.0) == pytest.approx(3.0)  # 0.25 left: 0.75 to refill
    assert buckets.take(limits, 2.0) == pytest.approx(1.0)  # refused: nothing was taken
    assert buckets.take(limits, 3.0) == 0.0


def test_idle_buckets_are_forgotten_past_the_bound(monkeypatch):
    monkeypatch.setattr(pollrate, "_PRUNE_AT", 10)
    buckets = pollrate._Buckets()
    for n in range(10):
        buckets.take({("key", n): 1.0}, 0.0)
    buckets.take({("key", "new"): 1.0}, pollrate.BURST_SECONDS + 1)
    assert list(buckets._buckets) == [("key", "new")]


def test_busy_buckets_past_the_bound_are_not_walked_on_every_poll(monkeypatch):
    monkeypatch.setattr(pollrate, "_PRUNE_AT", 10)
    buckets = pollrate._Buckets()
    walks = []
    prune = buckets._prune
    monkeypatch.setattr(buckets, "_prune", lambda now: (walks.append(now), prune(now)))
    for n in range(30):  # all busy: none can be forgotten
        buckets.take({("key", n): 1.0}, 0.0)
    assert len(buckets._buckets) == 30
    assert len(walks) == 2  # at 10 and at 20 buckets, not on each of the last 21 polls


def test_every_spelling_of_a_poll_draws_on_the_same_bucket(api, settings, clock, intake_a,
                                                           member_token):
    """HEAD, case, a bad or repeated ?wait=, a percent-encoded path: the key's one bucket
    (a limit per URL or per method could be walked around)."""
    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 1, 100
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    base = f"/v1/intake/{intake_a.pk}/work/{work_id}"
    spellings = [("get", base), ("head", base), ("get", base.upper().replace("/V1/INTAKE/",
                 "/v1/intake/").replace("/WORK/", "/work/")), ("get", f"{base}?wait=abc"),
                 ("get", f"{base}?wait=1&wait=2"), ("get", base.replace("work", "%77ork"))]
    statuses = [getattr(api, method)(path, **bearer(member_token)).status_code
                for method, path in spellings]
    assert [status == 429 for status in statuses] == [False] * 5 + [True]  # 5: the burst
    assert len(pollrate.buckets._buckets) == 2  # the key's and its organization's


def test_a_caller_without_a_working_key_makes_no_bucket(api, settings, clock, cast, intake_a,
                                                        member_token):
    """Buckets are made after authentication: bogus, malformed, revoked or re-cased keys
    cannot fill the process's memory with buckets."""
    from apikeys.services import apikey_revoke
    from apikeys.tokens import token_parse

    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 1, 1
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    revoked = apikey_issue(org=cast.org_a, label="gone", user=cast.member_a)
    apikey_revoke(key=revoked.key)
    lookup = token_parse(member_token).lookup_id
    for token in ["user.nope", f"user.{lookup}.x", member_token.upper(), revoked.token,
                  member_token[:-1], "team." + member_token[5:]]:
        assert _poll(api, intake_a, token, work_id).status_code == 401
    assert api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}").status_code == 401
    assert pollrate.buckets._buckets == {}


@pytest.mark.parametrize("action, body", [("cancel", {}), ("approval", {"decision": "approve"})])
def test_a_loop_of_cancels_or_approvals_is_limited_with_the_polls(
        api, settings, clock, cast, intake_a, member_token, action, body,
        django_assert_max_num_queries):
    """Approvals and cancels were unlimited: a loop POSTing them (each a 409 once the item
    is decided: a read of the item, its steps and a lock) held a web process's slots like a
    loop of polls. They draw on the poll buckets, and a refused one reads no item."""
    from auxot.models import AuditEvent

    settings.AUXOT_POLL_RATE_PER_KEY, settings.AUXOT_POLL_RATE_PER_ORG = 1, 100
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    url = f"/v1/intake/{intake_a.pk}/work/{work_id}/{action}"
    burst = int(pollrate.BURST_SECONDS)
    statuses = [api.post(url, body, format="json", **bearer(member_token)).status_code
                for _ in range(burst)]
    assert 429 not in statuses
    decided = AuditEvent.objects.filter(event__startswith="work_item.")
    events = decided.count()
    with django_assert_max_num_queries(4):
        refused = api.post(url, body, format="json", **bearer(member_token))
    assert refused.status_code == 429
    problem = refused.json()
    assert problem["code"] == "rate_limited" and "approvals and cancels" in problem["detail"]
    assert refused["Retry-After"] == "1"
    # The same bucket as the key's polls.
    assert _poll(api, intake_a, member_token, work_id).status_code == 429
    # Another key of the organization is served; the refusal changed no item.
    admin_token = apikey_issue(org=cast.org_a, label="admin key", user=cast.admin_a).token
    assert _poll(api, intake_a, admin_token, work_id).status_code == 200
    assert decided.count() == events
    clock.now += 1.0
    assert api.post(url, body, format="json", **bearer(member_token)).status_code != 429
