"""Every way a key or an intake can disappear leaves an audit row. The admin only revokes
keys and deactivates intakes, and refuses to delete a team or a user that has keys; but a
superuser's delete page deletes an unused intake, and a shell or a script deleting a team, a
user or an organization took their keys with it, and none of it left a trace in the trail."""

import pytest
from django.contrib.auth import get_user_model
from django.db.models.signals import pre_delete
from django.test import Client

from apikeys.models import ApiKey
from apikeys.services import apikey_issue, apikey_revoke
from auxot.models import AuditEvent, Membership, Organization, Team
from auxot.services import NO_REQUEST
from intakes.models import Intake
from intakes.services import intake_create
from tests.conftest import make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def root_client():
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    client = Client()
    client.force_login(root)
    return root, client


def _deleted(event: str, obj_id) -> AuditEvent:
    [row] = AuditEvent.objects.filter(event=event, object_id=str(obj_id))
    return row


def test_the_models_the_trail_follows_are_audited_however_they_are_deleted():
    """The class: keys and intakes have a receiver for every deletion (cascades included);
    secrets are deleted only by their service (audited), work items only by retention
    (audited); an organization with any of them has audit rows, which protect it."""
    assert pre_delete.has_listeners(ApiKey) and pre_delete.has_listeners(Intake)
    assert pre_delete.has_listeners(Membership)  # a member leaving, with their user too


def test_the_admin_keeps_a_team_or_a_user_that_has_keys(cast, root_client):
    """Revoked is final and kept: the delete pages refuse while keys exist."""
    root, client = root_client
    apikey_issue(org=cast.org_a, label="ci", team=cast.team_a, created_by=root)
    apikey_issue(org=cast.org_a, label="mine", user=cast.member_a, created_by=cast.member_a)
    for page in (f"/admin/auxot/team/{cast.team_a.pk}/delete/",
                 f"/admin/auth/user/{cast.member_a.pk}/delete/"):
        assert client.post(page, {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(org=cast.org_a).count() == 2
    assert not AuditEvent.objects.filter(event="apikey.deleted").exists()


def test_a_team_deleted_from_a_shell_takes_its_keys_on_the_record(cast):
    active = apikey_issue(org=cast.org_a, label="ci", team=cast.team_a).key
    revoked = apikey_issue(org=cast.org_a, label="old", team=cast.team_a).key
    apikey_revoke(key=revoked)
    team_pk = cast.team_a.pk
    cast.team_a.delete()
    assert not ApiKey.objects.filter(org=cast.org_a).exists()
    row = _deleted("apikey.deleted", active.pk)
    assert (row.org_id, row.actor_user_id, row.actor_label) == (cast.org_a.pk, None,
                                                                 NO_REQUEST)
    assert row.extra == {"kind": "team", "label": "ci", "lookup_id": active.lookup_id,
                         "was": "active",
                         "deleted_with": f"auxot.team {team_pk} (Org A / Platform)"}
    assert _deleted("apikey.deleted", revoked.pk).extra["was"] == "revoked"


def test_a_user_deleted_from_a_shell_takes_their_keys_on_the_record(cast):
    key = apikey_issue(org=cast.org_a, label="mine", user=cast.member_a,
                       created_by=cast.member_a).key
    get_user_model().objects.filter(pk=cast.member_a.pk).delete()  # a queryset, too
    row = _deleted("apikey.deleted", key.pk)
    assert row.org_id == cast.org_a.pk and row.extra["deleted_with"] == "auth.user (several)"


def test_an_intake_deleted_on_a_superusers_page_names_them(cast, root_client):
    root, client = root_client
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="W")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="unused", created_by=root)
    response = client.post(f"/admin/intakes/intake/{intake.pk}/delete/", {"post": "yes"},
                           REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 302 and not Intake.objects.filter(pk=intake.pk).exists()
    row = _deleted("intake.deleted", intake.pk)
    assert (row.org_id, row.actor_user_id, row.actor_label, row.ip) == (
        cast.org_a.pk, root.pk, "root", "10.1.2.3")
    assert row.extra == {"name": "unused", "workflow_id": str(workflow.pk), "was": "active",
                         "deleted_with": "itself"}


@pytest.mark.parametrize("path, signed_in", [("/admin/intakes/intake/", True),
                                             ("/v1/intake/x", False), ("/metrics", False)])
def test_only_the_admins_pages_lend_their_user(cast, path, signed_in):
    """An API request's actor is its key, which its services are given: nothing else."""
    from django.test import RequestFactory

    from auxot.actor import ActingUserMiddleware, acting

    request = RequestFactory().get(path, REMOTE_ADDR="10.9.8.7")
    request.user = cast.admin_a
    seen = []
    ActingUserMiddleware(lambda request: seen.append(acting()))(request)
    assert seen == [(cast.admin_a, "10.9.8.7") if signed_in else (None, None)]
    assert acting() == (None, None)  # and nothing after the request


def test_an_organization_deleted_without_history_records_what_went_with_it(db):
    """An organization with audit rows cannot be deleted (they protect it); one without may,
    and the rows about its keys must not hold it back either."""
    org = Organization.objects.create(name="Short-lived", slug="short")
    user = get_user_model().objects.create_user("temp", "t@example.com", "x")
    key = ApiKey.objects.create(org=org, kind="user", user=user, label="k",
                                lookup_id="aaaabbbbcccc", digest="0" * 64, last_four="abcd")
    team_key = ApiKey.objects.create(
        org=org, kind="team", team=Team.objects.create(org=org, name="T"), label="t",
        lookup_id="ddddeeeeffff", digest="0" * 64, last_four="abcd")
    org_pk = org.pk
    org.delete()
    assert not Organization.objects.filter(slug="short").exists()
    for obj in (key, team_key):
        row = _deleted("apikey.deleted", obj.pk)
        assert (row.org_id, row.actor_user_id, row.actor_label) == (None, None, NO_REQUEST)
        assert row.extra["org"] == "Short-lived"
        assert row.extra["deleted_with"] == f"auxot.organization {org_pk} (Short-lived)"


def test_a_user_deleted_from_a_shell_takes_their_memberships_on_the_record(cast):
    cast.auditor_a.delete()
    [row] = AuditEvent.objects.filter(event="membership.deleted")
    assert (row.org, row.actor_user, row.actor_label) == (cast.org_a, None, NO_REQUEST)
    assert row.extra["user"] == "auditor_a" and row.extra["role"] == "auditor"
