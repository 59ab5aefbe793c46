"""Who may do what over the API: auditors read, team keys need the plan that has teams,
and one person holds a bounded number of keys."""

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_issue, apikey_revoke
from auxot.errors import ApplicationError, PermissionDeniedError
from auxot.models import AuditEvent, AuditLogEntry, Membership
from intakes.models import Intake
from intakes.services import intake_create, intake_trigger
from tests.conftest import bearer, trigger
from workflows.models import WorkItem


@pytest.fixture
def auditor_token(cast) -> str:
    return apikey_issue(org=cast.org_a, label="auditor key", user=cast.auditor_a).token


def _assert_problem(response, status: int, code: str):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert set(body) >= {"type", "title", "status", "detail", "code"}
    return body


# --- auditors' keys read but never start work -----------------------------------------
def test_auditor_key_trigger_gets_403_and_creates_nothing(api, intake_a, auditor_token):
    response = trigger(api, intake_a.pk, auditor_token)
    body = _assert_problem(response, 403, "forbidden")
    assert "auditor" in body["detail"]
    assert not WorkItem.objects.exists()
    assert not AuditLogEntry.objects.filter(event="work_item.accepted").exists()


def test_auditor_trigger_is_refused_before_the_body_is_read(api, intake_a, auditor_token):
    response = api.post(f"/v1/intake/{intake_a.pk}", data=b"{not json",
                        content_type="application/json", **bearer(auditor_token))
    _assert_problem(response, 403, "forbidden")


def test_auditor_trigger_is_audited_as_a_rejection(api, cast, intake_a, auditor_token):
    trigger(api, intake_a.pk, auditor_token, REMOTE_ADDR="203.0.113.7")
    [event] = AuditEvent.objects.filter(event="intake.rejected")
    assert event.org == cast.org_a
    assert (event.extra["code"], event.extra["status"]) == ("forbidden", 403)
    assert event.extra["intake_id"] == str(intake_a.pk)
    assert event.ip == "203.0.113.7"
    assert auditor_token not in str(event.extra)


def test_auditor_key_may_poll(api, intake_a, member_token, auditor_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}", **bearer(auditor_token))
    assert response.status_code == 200
    assert response.json()["work_id"] == work_id


def test_auditor_key_cannot_cancel(api, intake_a, member_token, auditor_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = api.post(f"/v1/intake/{intake_a.pk}/work/{work_id}/cancel",
                        **bearer(auditor_token))
    _assert_problem(response, 403, "forbidden")
    assert WorkItem.objects.get(pk=work_id).status == "pending"


def test_key_of_a_member_demoted_to_auditor_stops_triggering(api, cast, intake_a,
                                                             member_token):
    assert trigger(api, intake_a.pk, member_token).status_code == 202
    Membership.objects.filter(user=cast.member_a).update(role=Membership.Role.AUDITOR)
    _assert_problem(trigger(api, intake_a.pk, member_token), 403, "forbidden")
    assert WorkItem.objects.count() == 1
    Membership.objects.filter(user=cast.member_a).update(role=Membership.Role.MEMBER)
    assert trigger(api, intake_a.pk, member_token).status_code == 202


def test_trigger_service_refuses_an_auditor_without_the_lookup(cast, intake_a):
    key = apikey_issue(org=cast.org_a, label="aud", user=cast.auditor_a).key
    plain = Intake.objects.select_related("workflow").get(pk=intake_a.pk)  # no key_role
    with pytest.raises(PermissionDeniedError):
        intake_trigger(intake=plain, key=key, payload={}, ip=None)
    assert not WorkItem.objects.exists()


def test_auditor_refusal_costs_no_extra_query(api, intake_a, auditor_token,
                                              django_assert_num_queries):
    trigger(api, intake_a.pk, auditor_token)  # first use touches last_used_at
    # key with the intake and role (one SELECT), then the intake.rejected audit row
    # (savepoint, insert, release)
    with django_assert_num_queries(4):
        trigger(api, intake_a.pk, auditor_token)


# --- team keys work only while the org's plan has teams --------------------------------
@pytest.fixture
def team_setup(cast, workflow_a):
    intake = intake_create(org=cast.org_a, workflow=workflow_a, name="team", team=cast.team_a)
    token = apikey_issue(org=cast.org_a, label="team key", team=cast.team_a).token
    return intake, token


def _set_plan(org, plan: str):
    org.plan = plan
    org.save(update_fields=["plan"])


def _assert_401(response):
    body = _assert_problem(response, 401, "unauthorized")
    assert response["WWW-Authenticate"].startswith("Bearer")
    return body


@pytest.mark.parametrize("plan", ["free", "pro"])
def test_team_key_gets_401_after_a_plan_downgrade_and_works_after_upgrade(
        api, cast, team_setup, plan):
    intake, token = team_setup
    work_id = trigger(api, intake.pk, token).json()["work_id"]
    _set_plan(cast.org_a, plan)
    body = _assert_401(trigger(api, intake.pk, token))
    assert "Business and Enterprise" in body["detail"]
    _assert_401(api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(token)))
    _assert_401(api.post(f"/v1/intake/{intake.pk}/work/{work_id}/cancel", **bearer(token)))
    assert WorkItem.objects.count() == 1
    assert WorkItem.objects.get().status == "pending"
    _set_plan(cast.org_a, "enterprise")
    assert trigger(api, intake.pk, token).status_code == 202


def test_team_key_401_on_a_lower_plan_matches_other_401s_in_shape(api, cast, team_setup):
    intake, token = team_setup
    _set_plan(cast.org_a, "pro")
    downgraded = _assert_401(trigger(api, intake.pk, token))
    unknown = _assert_401(trigger(api, intake.pk, "user.nothing.here"))
    assert set(downgraded) == set(unknown)
    assert downgraded["type"] == unknown["type"]


def test_personal_keys_keep_working_on_a_lower_plan(api, cast, intake_a, member_token):
    _set_plan(cast.org_a, "free")
    assert trigger(api, intake_a.pk, member_token).status_code == 202


def test_team_key_plan_check_costs_no_extra_query(api, cast, team_setup,
                                                   django_assert_num_queries):
    intake, token = team_setup
    trigger(api, intake.pk, token)  # first use touches last_used_at
    _set_plan(cast.org_a, "pro")
    with django_assert_num_queries(4):  # the key with its org; the intake.rejected row
        _assert_401(trigger(api, intake.pk, token))


# --- a cap on the active personal keys one person holds in one organization ------------
@pytest.fixture
def cap(settings):
    settings.AUXOT_MAX_KEYS_PER_USER = 2
    return settings


def test_key_cap_refuses_the_next_key_and_stores_nothing(cast, cap):
    for n in range(2):
        apikey_issue(org=cast.org_a, label=f"k{n}", user=cast.member_a)
    with pytest.raises(ApplicationError, match="already holds 2 active personal API keys"):
        apikey_issue(org=cast.org_a, label="one too many", user=cast.member_a)
    assert not ApiKey.objects.filter(label="one too many").exists()
    assert AuditEvent.objects.filter(event="apikey.issued").count() == 2


def test_revoked_and_expired_keys_do_not_count(cast, cap):
    revoked = apikey_issue(org=cast.org_a, label="old", user=cast.member_a).key
    apikey_revoke(key=revoked)
    apikey_issue(org=cast.org_a, label="short", user=cast.member_a,
                 expires_at=timezone.now() + timedelta(minutes=5))
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        apikey_issue(org=cast.org_a, label="new", user=cast.member_a)
        apikey_issue(org=cast.org_a, label="newer", user=cast.member_a)
    assert ApiKey.objects.filter(user=cast.member_a).count() == 4


def test_key_cap_is_per_person_and_organization_and_zero_switches_it_off(cast, cap):
    other_org = cast.org_b
    Membership.objects.create(user=cast.member_a, org=other_org, role="member")
    for n in range(2):
        apikey_issue(org=cast.org_a, label=f"a{n}", user=cast.member_a)
    apikey_issue(org=other_org, label="b", user=cast.member_a)
    apikey_issue(org=cast.org_a, label="admin's", user=cast.admin_a)
    apikey_issue(org=cast.org_a, label="team", team=cast.team_a)  # team keys: not a person's
    cap.AUXOT_MAX_KEYS_PER_USER = 0
    apikey_issue(org=cast.org_a, label="uncapped", user=cast.member_a)
    assert ApiKey.objects.filter(user=cast.member_a, org=cast.org_a).count() == 3


def test_key_cap_is_a_clear_form_error_in_the_admin(client, cast, cap):
    for n in range(2):
        apikey_issue(org=cast.org_a, label=f"k{n}", user=cast.member_a)
    client.force_login(cast.member_a)
    response = client.post("/admin/apikeys/apikey/add/", {"org": cast.org_a.pk, "label": "x",
                                                           "kind": "user"})
    assert response.status_code == 200
    assert "already holds 2 active personal API keys" in response.content.decode()
    assert not ApiKey.objects.filter(label="x").exists()


def test_key_cap_is_a_clear_error_in_the_command(cast, cap):
    for n in range(2):
        apikey_issue(org=cast.org_a, label=f"k{n}", user=cast.member_a)
    with pytest.raises(CommandError, match="revoke one first"):
        call_command("apikey_issue", "--org", "org-a", "--user", "member_a", "--label", "x",
                     stdout=StringIO(), stderr=StringIO())
    assert not ApiKey.objects.filter(label="x").exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_issues_cannot_overrun_the_cap(cast, cap):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def issue(n):
        try:
            apikey_issue(org=cast.org_a, label=f"c{n}", user=cast.member_a)
            return "issued"
        except ApplicationError:
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(issue, range(6)))
    assert results.count("issued") == 2
    assert ApiKey.objects.filter(user=cast.member_a, revoked_at__isnull=True).count() == 2
