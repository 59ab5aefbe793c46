"""Who may call an intake: every 401 and every 404, and 404 bodies that cannot be told apart."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_issue, apikey_revoke
from intakes.services import intake_create, intake_set_active
from tests.conftest import bearer, trigger
from workflows.models import WorkItem


def _assert_401(response):
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize("header", [
    None,
    "Basic dXNlcjpwYXNz",
    "Token abc",
    "bearer {token}",
    "Bearer  {token}",
    "Bearer\t{token}",
    "Bearer {token} ",
    "Bearer",
    "Bearer not-a-key",
    "Bearer user.short.key",
])
def test_bad_authorization_header_gets_401(api, intake_a, member_token, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header.format(token=member_token)}
    response = api.post(f"/v1/intake/{intake_a.pk}", data={}, format="json", **extra)
    _assert_401(response)
    assert not WorkItem.objects.exists()


def test_wrong_checksum_gets_401_without_lookup(api, intake_a, member_token):
    tampered = member_token[:-1] + ("0" if member_token[-1] != "0" else "1")
    with CaptureQueriesContext(connection) as queries:
        response = trigger(api, intake_a.pk, tampered)
    _assert_401(response)
    # no read at all: the only statements are the intake.rejected audit row's write
    # (in its savepoint)
    statements = [q["sql"] for q in queries.captured_queries
                  if not q["sql"].lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("INSERT"), \
        statements
    assert "auxot_auditevent" in statements[0]
    # (a second request only now: its queries would move the captured window above)
    assert "checksum does not match" in response.json()["detail"]  # not "malformed"
    assert "checksum" not in trigger(api, intake_a.pk, "user.nope").json()["detail"]


@pytest.mark.parametrize("keep", [5, 17, 18, 40, 66])
def test_cut_short_key_gets_401_that_says_so(api, intake_a, member_token, keep):
    """A key that lost its end in the copy is not "malformed": the detail says it was cut
    short and how much of it arrived, as the README's troubleshooting promises."""
    response = trigger(api, intake_a.pk, member_token[:keep])
    _assert_401(response)
    assert response.json()["detail"] == (
        f"The API key is cut short: {keep} of its 67 characters. Copy it again, whole.")
    # a key with a wrong character is still malformed, whatever its length
    assert "cut short" not in trigger(api, intake_a.pk, member_token[:20] + "!").json()["detail"]
    assert not WorkItem.objects.exists()


def test_unknown_key_with_valid_shape_gets_401(api, intake_a, cast):
    other = apikey_issue(org=cast.org_a, label="tmp", user=cast.member_a)
    ApiKey.objects.filter(pk=other.key.pk).delete()
    _assert_401(trigger(api, intake_a.pk, other.token))


def test_revoked_key_gets_401(api, intake_a, cast):
    issued = apikey_issue(org=cast.org_a, label="k", user=cast.member_a)
    assert trigger(api, intake_a.pk, issued.token).status_code == 202
    apikey_revoke(key=issued.key, revoked_by=cast.admin_a)
    response = trigger(api, intake_a.pk, issued.token)
    _assert_401(response)
    assert "revoked" in response.json()["detail"]


def test_expired_key_gets_401(api, intake_a, cast, time_machine):
    issued = apikey_issue(org=cast.org_a, label="k", user=cast.member_a,
                          expires_at=timezone.now() + timedelta(hours=1))
    assert trigger(api, intake_a.pk, issued.token).status_code == 202
    time_machine.move_to(timezone.now() + timedelta(hours=2))
    _assert_401(trigger(api, intake_a.pk, issued.token))


def test_deactivated_user_key_gets_401(api, intake_a, cast, member_token):
    cast.member_a.is_active = False
    cast.member_a.save()
    _assert_401(trigger(api, intake_a.pk, member_token))


def test_secret_never_echoed_in_401(api, intake_a, member_token):
    response = api.post(f"/v1/intake/{intake_a.pk}", data={}, format="json",
                        HTTP_AUTHORIZATION=f"Bearer  {member_token}")
    assert member_token not in response.content.decode()


def _not_found_cases(api, cast, intake_a, member_token, outsider_token, workflow_a):
    off = intake_create(org=cast.org_a, workflow=workflow_a, name="off")
    intake_set_active(intake=off, active=False)
    team_only = intake_create(org=cast.org_a, workflow=workflow_a, name="team", team=cast.team_a)
    return {
        "unknown intake": trigger(api, uuid.uuid4(), member_token),
        "not a uuid": trigger(api, "12345", member_token),
        "deactivated": trigger(api, off.pk, member_token),
        "other org": trigger(api, intake_a.pk, outsider_token),
        "team not mine": trigger(api, team_only.pk, member_token),
    }


def test_404_bodies_are_byte_identical(api, cast, intake_a, member_token, outsider_token,
                                       workflow_a):
    responses = _not_found_cases(api, cast, intake_a, member_token, outsider_token, workflow_a)
    bodies = {name: (r.status_code, r["Content-Type"], r.content) for name, r in responses.items()}
    assert len(set(bodies.values())) == 1, bodies
    status, content_type, _ = next(iter(bodies.values()))
    assert status == 404
    assert content_type == "application/problem+json"
    assert not WorkItem.objects.exists()


def test_work_id_404s_match_intake_404(api, cast, intake_a, member_token, workflow_a):
    other = intake_create(org=cast.org_a, workflow=workflow_a, name="other")
    work_id = trigger(api, other.pk, member_token).json()["work_id"]
    unknown_intake = trigger(api, uuid.uuid4(), member_token).content
    for path in [f"/v1/intake/{intake_a.pk}/work/{uuid.uuid4()}",
                 f"/v1/intake/{intake_a.pk}/work/not-a-uuid",
                 f"/v1/intake/{intake_a.pk}/work/{work_id}"]:
        response = api.get(path, **bearer(member_token))
        assert response.status_code == 404
        assert response.content == unknown_intake


def test_outsider_cannot_poll_org_a_work(api, intake_a, member_token, outsider_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}", **bearer(outsider_token))
    assert response.status_code == 404


def test_team_key_calls_only_its_team_intakes(api, cast, workflow_a, intake_a):
    team_intake = intake_create(org=cast.org_a, workflow=workflow_a, name="t", team=cast.team_a)
    token = apikey_issue(org=cast.org_a, label="ci", team=cast.team_a).token
    assert trigger(api, team_intake.pk, token).status_code == 202
    assert trigger(api, intake_a.pk, token).status_code == 404


def test_member_of_team_may_use_team_intake(api, cast, workflow_a, member_token):
    team_intake = intake_create(org=cast.org_a, workflow=workflow_a, name="t", team=cast.team_a)
    assert trigger(api, team_intake.pk, member_token).status_code == 404
    cast.member_a.memberships.get().teams.add(cast.team_a)
    assert trigger(api, team_intake.pk, member_token).status_code == 202


def test_last_used_at_is_touched_at_most_once_per_interval(api, intake_a, cast, member_token):
    key = ApiKey.objects.get(user=cast.member_a)
    assert key.last_used_at is None
    trigger(api, intake_a.pk, member_token)
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    trigger(api, intake_a.pk, member_token)
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first


def test_the_joined_key_and_intake_read_sees_every_change_on_the_next_request(
        api, cast, workflow_a):
    """Key and intake access come from one SELECT per request, nothing cached: a revoked
    key stops the poll at once, and a member taken off a team loses its intake at once."""
    intake = intake_create(org=cast.org_a, workflow=workflow_a, name="team", team=cast.team_a)
    membership = cast.member_a.memberships.get()
    membership.teams.add(cast.team_a)
    issued = apikey_issue(org=cast.org_a, label="k", user=cast.member_a)
    work_id = trigger(api, intake.pk, issued.token).json()["work_id"]
    poll = f"/v1/intake/{intake.pk}/work/{work_id}"
    assert api.get(poll, **bearer(issued.token)).status_code == 200
    membership.teams.remove(cast.team_a)
    assert api.get(poll, **bearer(issued.token)).status_code == 404
    assert trigger(api, intake.pk, issued.token).status_code == 404
    membership.teams.add(cast.team_a)
    assert api.get(poll, **bearer(issued.token)).status_code == 200
    apikey_revoke(key=issued.key, revoked_by=cast.admin_a)
    _assert_401(api.get(poll, **bearer(issued.token)))
    _assert_401(api.post(f"{poll}/cancel", format="json", **bearer(issued.token)))
