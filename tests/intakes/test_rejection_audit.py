"""intake.rejected audit rows: reason, status, key lookup id, IP; never body or secret."""

import json
from unittest import mock

import pytest
from django.db import OperationalError

from apikeys.tokens import _checksum, token_parse
from auxot.models import AuditEvent
from intakes import rejections
from tests.conftest import trigger


def forge_secret(token: str) -> str:
    """The same kind and lookup id, another secret, a valid checksum."""
    body = token[:-6]
    body = body[:-1] + ("A" if body[-1] != "A" else "B")
    return body + _checksum(body)


def _rejections():
    return list(AuditEvent.objects.filter(event="intake.rejected").order_by("pk"))


def test_wrong_secret_is_recorded_with_lookup_id_and_ip_not_the_token(api, intake_a,
                                                                      member_token):
    lookup = token_parse(member_token).lookup_id
    forged = forge_secret(member_token)
    response = trigger(api, intake_a.pk, forged, body={"secret": "payload-secret"},
                       REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 401
    [event] = _rejections()
    assert event.ip == "203.0.113.9"
    assert event.extra["code"] == "unauthorized" and event.extra["status"] == 401
    assert event.extra["intake_id"] == str(intake_a.pk)
    stored = json.dumps(event.extra) + event.actor_key_lookup + event.actor_label
    assert forged not in stored and member_token not in stored
    assert "payload-secret" not in stored
    assert event.extra["key_lookup_id"] == lookup  # well-formed: the lookup id is no secret


def test_404_is_recorded_against_the_keys_org(api, cast, intake_a, outsider_token):
    assert trigger(api, intake_a.pk, outsider_token).status_code == 404
    [event] = _rejections()
    assert event.org == cast.org_b
    assert event.extra["code"] == "not_found"
    assert event.extra["key_lookup_id"] == token_parse(outsider_token).lookup_id
    assert event.actor_key_lookup == event.extra["key_lookup_id"]


@pytest.mark.parametrize(("kwargs", "status"), [
    ({"data": "x" * 5000, "content_type": "application/json"}, 413),
    ({"data": "{}", "content_type": "text/plain"}, 415),
    ({"data": "{", "content_type": "application/json"}, 400),
])
def test_body_rejections_are_recorded(api, intake_a, member_token, settings, kwargs, status):
    settings.AUXOT_MAX_BODY_BYTES = 1024
    response = api.post(f"/v1/intake/{intake_a.pk}", HTTP_AUTHORIZATION=f"Bearer {member_token}",
                        **kwargs)
    assert response.status_code == status
    [event] = _rejections()
    assert event.extra["status"] == status
    assert "x" * 100 not in json.dumps(event.extra)


def test_429_is_recorded(api, intake_a, member_token, one_rate_limit_window):
    settings = one_rate_limit_window
    settings.AUXOT_RATE_LIMIT_KEY = 1
    trigger(api, intake_a.pk, member_token)
    assert trigger(api, intake_a.pk, member_token).status_code == 429
    assert [e.extra["code"] for e in _rejections()] == ["rate_limited"]


def test_accepted_trigger_and_poll_are_not_recorded(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}",
            HTTP_AUTHORIZATION=f"Bearer {member_token}")
    assert _rejections() == []


def test_poll_of_unknown_work_id_is_recorded(api, intake_a, member_token):
    response = api.get(f"/v1/intake/{intake_a.pk}/work/not-a-uuid",
                       HTTP_AUTHORIZATION=f"Bearer {member_token}")
    assert response.status_code == 404
    assert [e.extra["method"] for e in _rejections()] == ["GET"]


@pytest.fixture
def clock():
    """The budget's clock, held still (a test never straddles a real minute) until moved."""
    now = [600.0]
    with mock.patch.object(rejections.budget, "clock", lambda: now[0]):
        yield now


def test_flood_of_401s_is_bounded_and_counted(api, intake_a, settings, clock):
    settings.AUXOT_REJECTION_AUDIT_PER_SOURCE = 3
    for _ in range(40):
        assert trigger(api, intake_a.pk, "user.nope").status_code == 401
    assert len(_rejections()) == 3
    clock[0] += 59.5  # the same minute: still over budget
    trigger(api, intake_a.pk, "user.nope")
    assert len(_rejections()) == 3
    clock[0] += 0.5  # a new minute
    trigger(api, intake_a.pk, "user.nope")
    events = _rejections()
    assert len(events) == 4
    assert sorted(e.extra.get("suppressed", 0) for e in events) == [0, 0, 0, 38]


def test_global_budget_caps_many_sources(api, intake_a, settings, clock):
    settings.AUXOT_REJECTION_AUDIT_PER_MINUTE = 5
    for n in range(20):
        trigger(api, intake_a.pk, "user.nope", REMOTE_ADDR=f"198.51.100.{n}")
    assert len(_rejections()) == 5


def test_failing_audit_write_keeps_the_4xx(api, intake_a):
    with mock.patch("intakes.rejections.audit_record",
                    side_effect=OperationalError("disk full")):
        response = trigger(api, intake_a.pk, "user.nope")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_an_ipv6_caller_is_one_source_per_64(api, intake_a, settings, clock):
    """Anyone on IPv6 holds a /64: an address each must not multiply the per-source
    budget until the whole process budget is theirs (hiding everyone else's rejections)."""
    settings.AUXOT_REJECTION_AUDIT_PER_SOURCE = 2
    for n in range(1, 21):
        trigger(api, intake_a.pk, "user.nope", REMOTE_ADDR=f"2001:db8:1:2::{n:x}")
    assert len(_rejections()) == 2
    trigger(api, intake_a.pk, "user.nope", REMOTE_ADDR="2001:db8:1:3::1")  # another /64
    for n in range(1, 4):  # IPv4: each address its own source
        trigger(api, intake_a.pk, "user.nope", REMOTE_ADDR=f"198.51.100.{n}")
    assert sorted(e.ip for e in _rejections()) == [
        "198.51.100.1", "198.51.100.2", "198.51.100.3",
        "2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:3::1"]


def test_suppressed_counts_are_kept_for_a_bounded_number_of_sources(settings, clock,
                                                                    monkeypatch):
    """Past the minute's budget every new source was remembered until it wrote a row again:
    a caller with many addresses grew the process's memory without end."""
    from auxot import auditbudget

    monkeypatch.setattr(auditbudget, "SUPPRESSED_SOURCES_MAX", 50)
    settings.AUXOT_REJECTION_AUDIT_PER_MINUTE = 1
    budget = auditbudget.AuditBudget(
        per_minute=lambda: settings.AUXOT_REJECTION_AUDIT_PER_MINUTE,
        per_source=lambda: settings.AUXOT_REJECTION_AUDIT_PER_SOURCE,
        clock=lambda: clock[0])
    assert budget.take(("198.51.100.1", "unauthorized")) == 0
    for n in range(1_000):
        assert budget.take((f"2001:db8:{n:x}::/64", "unauthorized")) is None
    assert budget.take(("198.51.100.1", "unauthorized")) is None  # known: still counted
    assert len(budget._suppressed) == 50
    clock[0] += 60
    assert budget.take(("2001:db8:0::/64", "unauthorized")) == 1
