"""Every add, change and delete made on an admin page is on the audit trail: who, from where,
which object, its organization, what changed (old → new, write-only values hidden), in the
transaction of the change.

`test_every_registered_admin_audits_adds_changes_and_deletes` enumerates the admin registry:
a model registered without a way to build one here (INSTANCES), or whose admin writes no
row, fails it. The admins whose services write the trail themselves are named in
SERVICES_AUDIT, with the tests that prove it. Custom actions and admin URLs are enumerated,
with the event each must write, in test_admin_object_roles.py (CASES).
"""

from __future__ import annotations

import pytest
from django import forms
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.signals import pre_delete
from django.test import Client, RequestFactory
from django_q.models import Failure, OrmQ, Schedule, Success

from auxot.admin_base import HIDDEN, AuditedAdminMixin
from auxot.models import AuditEvent, Membership, Organization, Team
from intakes.models import CallbackDelivery, CallbackEndpoint
from intakes.services import intake_create
from tests.conftest import make_workflow
from workflows.models import Provider
from workflows.services import work_item_create

IP = "10.1.2.3"

# Admins that write no row of their own: their services do (tests named).
SERVICES_AUDIT = {
    "intakes.Intake": "tests/auxot/test_cascade_audit.py, tests/admin/test_admin_roles.py",
    "apikeys.ApiKey": "tests/apikeys/test_apikeys.py",
    "auxot.Secret": "tests/auxot/test_secrets.py",
}


def _n(counter=[0]) -> int:  # noqa: B006 - a counter for unique names
    counter[0] += 1
    return counter[0]


def _task(model):
    def build(cast):
        return model.objects.create(id=f"t{_n()}", name="task", func="math.floor", args=(1.5,),
                                    kwargs={}, started="2026-01-01T00:00:00Z",
                                    stopped="2026-01-01T00:00:01Z", success=model is Success)
    return build


def _item(cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})],
                             name=f"Flow {_n()}")
    intake = intake_create(org=cast.org_a, workflow=workflow, name=f"Intake {_n()}")
    with transaction.atomic():
        return work_item_create(workflow=workflow, input={}, intake=intake)


INSTANCES = {
    "auxot.Organization": lambda cast: Organization.objects.create(name="New", slug=f"n{_n()}"),
    "auxot.Team": lambda cast: Team.objects.create(org=cast.org_a, name=f"T{_n()}"),
    "auxot.Membership": lambda cast: Membership.objects.create(
        org=cast.org_a, role="member",
        user=get_user_model().objects.create_user(f"u{_n()}", password="pw")),
    "auxot.AuditEvent": None,  # append-only: no add, change or delete for anyone
    "workflows.Workflow": lambda cast: make_workflow(cast.org_a, [("transform", {})],
                                                     name=f"Flow {_n()}"),
    "workflows.Provider": lambda cast: Provider.objects.create(
        org=cast.org_a, name=f"p{_n()}", base_url="https://llm.example.com/v1", model="m"),
    "workflows.WorkItem": _item,
    "intakes.CallbackDelivery": lambda cast: CallbackDelivery.objects.create(
        work_item=(item := _item(cast)), intake=item.intake, url="https://hooks.example.com/x",
        webhook_id=f"w{_n()}"),
    "intakes.CallbackEndpoint": lambda cast: CallbackEndpoint.objects.create(key=f"k{_n()}"),
    "auth.User": lambda cast: get_user_model().objects.create_user(f"x{_n()}", password="pw"),
    "auth.Group": lambda cast: Group.objects.create(name=f"g{_n()}"),
    "django_q.Schedule": lambda cast: Schedule.objects.create(name=f"s{_n()}",
                                                              func="math.floor"),
    "django_q.Success": _task(Success),
    "django_q.Failure": _task(Failure),
    "django_q.OrmQ": lambda cast: OrmQ.objects.create(key="default", payload="x",
                                                      lock=None),
}


@pytest.fixture
def root():
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


def _request(user):
    request = RequestFactory().post("/admin/", REMOTE_ADDR=IP)
    request.user = user
    return request


def _rows(model, pk) -> dict[str, AuditEvent]:
    return {row.event.rpartition(".")[2]: row for row in AuditEvent.objects.filter(
        object_type=model._meta.label_lower, object_id=str(pk))}


def _org_id(model_admin, obj):
    return model_admin.audit_org(obj).pk if model_admin.audit_org(obj) else None


def test_every_registered_admin_audits_adds_changes_and_deletes(cast, root):
    labels = {model._meta.label for model in admin.site._registry}
    assert labels <= set(INSTANCES) | set(SERVICES_AUDIT), (
        f"registered without a case here: {sorted(labels - set(INSTANCES) - set(SERVICES_AUDIT))}")
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        assert isinstance(model_admin, AuditedAdminMixin), label
        assert model_admin.admin_audit == (label not in SERVICES_AUDIT), label
        if label in SERVICES_AUDIT or INSTANCES[label] is None:
            continue
        kept, gone = INSTANCES[label](cast), INSTANCES[label](cast)
        gone_pk = gone.pk
        model_admin.log_addition(_request(root), kept, [{"added": {}}])
        model_admin.log_change(_request(root), kept, [{"changed": {"fields": ["x"]}}])
        model_admin.delete_model(_request(root), gone)
        assert not model.objects.filter(pk=gone_pk).exists(), label
        rows = {**_rows(model, kept.pk), **_rows(model, gone_pk)}
        assert set(rows) == {"created", "changed", "deleted"}, (label, rows)
        name = model._meta.model_name
        for verb, row in rows.items():
            assert row.event == f"{name}.{verb}", label
            if verb == "deleted" and model_admin.deletions_audited_elsewhere:
                # its receiver's row: the acting user comes from an admin page's request
                # (test_deleting_a_user_records_each_membership_it_took)
                assert pre_delete.has_listeners(model), label
                continue
            assert (row.actor_user, row.ip, row.object_type) == (root, IP, model._meta.label_lower)
            org = None if model is Organization and verb == "deleted" else _org_id(
                model_admin, kept)
            assert row.org_id == org, (label, verb)


def test_admin_hidden_fields_never_reach_the_trail():
    class Form(forms.Form):
        name = forms.CharField()
        password1 = forms.CharField(widget=forms.PasswordInput)
        value = forms.CharField()
        hook = forms.URLField(assume_scheme="https")

    from auxot.admin_base import form_changes

    form = Form(data={"name": "b", "password1": "hunter2", "value": "s3cr3t",
                      "hook": "https://h.example.com/T0/B0/XXXXsecretXXXX?token=abc"},
                initial={"name": "a"})
    assert form.is_valid()
    changes = form_changes(form)
    assert changes["name"] == ["a", "b"]
    assert changes["password1"] == changes["value"] == [HIDDEN, HIDDEN]
    text = repr(changes)
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "XXXXsecretXXXX" not in text and "abc" not in text


def test_an_admin_adding_a_team_is_audited_with_its_organization(client, cast):
    client.force_login(cast.admin_a)
    response = client.post("/admin/auxot/team/add/", {"org": cast.org_a.pk, "name": "Ops"},
                           REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content[:500]
    team = Team.objects.get(name="Ops")
    [row] = AuditEvent.objects.filter(event="team.created", object_id=str(team.pk))
    assert (row.org, row.actor_user, row.ip) == (cast.org_a, cast.admin_a, IP)
    assert row.extra["fields"]["name"] == [None, "Ops"]
    assert row.extra["fields"]["org"] == [None, "Org A"]


def _membership_post(membership, role: str) -> dict:
    return {"user": membership.user_id, "org": membership.org_id, "role": role}


def test_a_role_change_is_audited_old_to_new_and_shown_to_that_orgs_auditor_only(
        client, cast, root):
    membership = Membership.objects.get(user=cast.member_a)
    client.force_login(root)
    response = client.post(f"/admin/auxot/membership/{membership.pk}/change/",
                           _membership_post(membership, "admin"), REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content[:800]
    [row] = AuditEvent.objects.filter(event="membership.changed")
    assert row.extra["fields"] == {"role": ["member", "admin"]}
    assert (row.org, row.actor_user, row.ip) == (cast.org_a, root, IP)

    for user, shown in ((cast.auditor_a, True), (cast.outsider_b, False)):
        viewer = Client()
        viewer.force_login(user)
        listing = viewer.get("/admin/auxot/auditevent/", {"q": str(row.object_id)})
        assert ("membership.changed" in listing.content.decode()) is shown
        assert viewer.get(f"/admin/auxot/auditevent/{row.pk}/change/").status_code == (
            200 if shown else 404)


def test_a_change_that_fails_after_its_row_leaves_neither(client, cast, root, monkeypatch):
    membership = Membership.objects.get(user=cast.member_a)

    def broken(*args, **kwargs):
        raise RuntimeError("history table down")

    monkeypatch.setattr(LogEntry.objects, "log_actions", broken)
    client.force_login(root)
    client.raise_request_exception = False
    response = client.post(f"/admin/auxot/membership/{membership.pk}/change/",
                           _membership_post(membership, "admin"))
    assert response.status_code == 500
    assert Membership.objects.get(pk=membership.pk).role == "member"
    assert not AuditEvent.objects.filter(event="membership.changed").exists()


def test_delete_selected_writes_its_rows_with_the_deletion_only(client, cast, root,
                                                                monkeypatch):
    teams = [Team.objects.create(org=cast.org_b, name=f"Gone {n}") for n in range(2)]
    post = {"action": "delete_selected", "post": "yes",
            "_selected_action": [str(team.pk) for team in teams]}
    client.force_login(root)
    real_delete = QuerySet.delete

    def broken(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(QuerySet, "delete", broken)
    client.raise_request_exception = False
    assert client.post("/admin/auxot/team/", post).status_code == 500
    assert Team.objects.filter(pk__in=[t.pk for t in teams]).count() == 2
    assert not AuditEvent.objects.filter(event="team.deleted").exists()

    monkeypatch.setattr(QuerySet, "delete", real_delete)
    assert client.post("/admin/auxot/team/", post, REMOTE_ADDR=IP).status_code == 302
    rows = AuditEvent.objects.filter(event="team.deleted")
    assert sorted(rows.values_list("object_id", flat=True)) == sorted(str(t.pk) for t in teams)
    assert {(row.org_id, row.actor_user_id, row.ip) for row in rows} == {
        (cast.org_b.pk, root.pk, IP)}


def _page_post(response) -> dict:
    """The POST a change page's Save would send, unchanged, from its forms."""
    data = {}
    context = response.context
    forms_on_page = [context["adminform"].form]
    for inline in context["inline_admin_formsets"]:
        forms_on_page += [inline.formset.management_form, *inline.formset.forms]
    for form in forms_on_page:
        for name, field in form.fields.items():
            bound = form[name]
            if field.disabled:
                continue
            value = bound.value()
            if isinstance(field.widget, forms.MultiWidget):
                for index, part in enumerate(field.widget.decompress(value)):
                    data[f"{bound.html_name}_{index}"] = "" if part is None else str(part)
            elif isinstance(field, forms.ModelMultipleChoiceField):
                data[bound.html_name] = [str(getattr(v, "pk", v)) for v in value or ()]
            elif isinstance(field, forms.BooleanField):
                if value:
                    data[bound.html_name] = "on"
            elif value is not None:
                data[bound.html_name] = field.widget.format_value(value) or ""
    return data


def test_a_workflows_step_edit_is_audited_with_old_and_new_config_urls_redacted(
        client, cast):
    workflow = make_workflow(cast.org_a, [("http", {"url": "https://a.example.com/T1/secretpath"
                                                    "?token=old"})], name="Hooked")
    client.force_login(cast.admin_a)
    page = client.get(f"/admin/workflows/workflow/{workflow.pk}/change/")
    data = _page_post(page)
    [config] = [name for name in data if name.startswith("steps-0-config")]
    data[config] = '{"url": "https://b.example.com/T2/othersecret?token=new"}'
    data["description"] = "now posts to b"
    response = client.post(f"/admin/workflows/workflow/{workflow.pk}/change/", data,
                           REMOTE_ADDR=IP)
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    [row] = AuditEvent.objects.filter(event="workflow.changed", object_id=str(workflow.pk))
    assert (row.org, row.actor_user, row.ip) == (cast.org_a, cast.admin_a, IP)
    assert row.extra["fields"]["description"] == ["", "now posts to b"]
    [step] = row.extra["inlines_changed"]
    old, new = step["fields"]["config"]
    assert old["url"].startswith("https://a.example.com/") and new["url"].startswith(
        "https://b.example.com/")
    for hidden in ("secretpath", "othersecret", "token=old", "token=new"):
        assert hidden not in repr(row.extra)


def test_a_users_password_set_in_the_admin_is_audited_without_it(client, cast, root):
    client.force_login(root)
    response = client.post(f"/admin/auth/user/{cast.member_a.pk}/password/", {
        "password1": "Brand-new-pass-42!", "password2": "Brand-new-pass-42!",
        "usable_password": "true"}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    [row] = AuditEvent.objects.filter(event="user.changed", object_id=str(cast.member_a.pk))
    assert (row.actor_user, row.ip, row.org) == (root, IP, None)
    assert "Brand-new-pass" not in repr(row.extra)
    cast.member_a.refresh_from_db()
    assert cast.member_a.password not in repr(row.extra)


def test_granting_superuser_is_audited_old_to_new(client, cast, root):
    client.force_login(root)
    page = client.get(f"/admin/auth/user/{cast.member_a.pk}/change/")
    data = _page_post(page)
    data["is_superuser"] = "on"
    response = client.post(f"/admin/auth/user/{cast.member_a.pk}/change/", data)
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    [row] = AuditEvent.objects.filter(event="user.changed", object_id=str(cast.member_a.pk))
    assert row.extra["fields"]["is_superuser"] == [False, True]


def test_deleting_a_user_records_each_membership_it_took(client, cast, root):
    """A member leaving is a row in their organization's trail, however it happens: the
    membership's own delete page (one row), their user's (one per organization)."""
    client.force_login(root)
    Membership.objects.create(user=cast.auditor_a, org=cast.org_b, role="member")
    response = client.post(f"/admin/auxot/membership/{cast.member_a.memberships.get().pk}"
                           "/delete/", {"post": "yes"}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    [row] = AuditEvent.objects.filter(event="membership.deleted")
    assert (row.org, row.actor_user, row.ip) == (cast.org_a, root, IP)
    assert row.extra["user"] == "member_a" and row.extra["role"] == "member"

    response = client.post(f"/admin/auth/user/{cast.auditor_a.pk}/delete/", {"post": "yes"},
                           REMOTE_ADDR=IP)
    assert response.status_code == 302
    rows = AuditEvent.objects.filter(event="membership.deleted", extra__user="auditor_a")
    assert sorted((row.org_id, row.extra["role"]) for row in rows) == [
        (cast.org_a.pk, "auditor"), (cast.org_b.pk, "member")]
    assert {(row.actor_user_id, row.ip) for row in rows} == {(root.pk, IP)}
    assert all(row.extra["deleted_with"].startswith("auth.user") for row in rows)
    assert AuditEvent.objects.filter(event="user.deleted").count() == 1


def test_save_with_nothing_changed_writes_no_row(client, cast, root):
    """Save pressed on an unchanged page (a work item's fields are all read-only) wrote an
    empty `.changed` row: noise in the trail an auditor reads."""
    membership = Membership.objects.get(user=cast.member_a)
    client.force_login(root)
    url = f"/admin/auxot/membership/{membership.pk}/change/"
    assert client.post(url, _membership_post(membership, membership.role),
                       REMOTE_ADDR=IP).status_code == 302
    assert not AuditEvent.objects.filter(event="membership.changed").exists()
    assert client.post(url, _membership_post(membership, "admin"),
                       REMOTE_ADDR=IP).status_code == 302
    assert AuditEvent.objects.filter(event="membership.changed").count() == 1


def test_a_membership_for_a_user_without_staff_status_says_they_cannot_sign_in(
        client, cast, root):
    """A user added in the admin is not staff by default, and a membership alone did not
    let them sign in ("enter the correct username and password for a staff account"):
    saving it says what is missing."""
    newbie = get_user_model().objects.create_user("newbie", password="pw")
    client.force_login(root)
    response = client.post("/admin/auxot/membership/add/",
                           {"user": newbie.pk, "org": cast.org_a.pk, "role": "member"},
                           REMOTE_ADDR=IP, follow=True)
    assert Membership.objects.filter(user=newbie, org=cast.org_a).exists()
    assert "The user newbie cannot sign in to the admin yet: tick Staff status" in (
        response.content.decode())
    membership = Membership.objects.get(user=cast.member_a)  # staff: nothing to say
    response = client.post(f"/admin/auxot/membership/{membership.pk}/change/",
                           _membership_post(membership, "member"), REMOTE_ADDR=IP, follow=True)
    assert "cannot sign in to the admin" not in response.content.decode()
