"""An object's organization is chosen when it is made and never changed on its page.

Workflows, teams and providers had `org` in their change form: an admin of two
organizations could move org A's workflow into org B. Its intakes stayed in A (an intake
whose workflow is another organization's, which `intake_create` refuses), A's work history
followed the workflow (work items are scoped by their workflow's organization) and B's
auditors and members, who hold no role in A, read A's inputs and outputs. Enumerated over
every admin of a model placed in an organization by an `org` field, for a superuser and for
an admin of both organizations, with the page's own form submitted as a browser would.
"""

from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse

from apikeys.models import ApiKey
from apikeys.services import apikey_issue
from auxot.admin_base import OrgScopedAdmin
from auxot.models import AuditEvent, Membership, Secret, Team
from auxot.secrets import secret_create
from auxot.services import audit_record
from intakes.models import Intake
from intakes.services import intake_create
from tests.conftest import make_workflow
from workflows.models import Provider, Workflow, WorkItem
from workflows.services import work_item_create

pytestmark = pytest.mark.django_db


def _org_placed_admins():
    for model, model_admin in admin.site._registry.items():
        if isinstance(model_admin, OrgScopedAdmin) and any(
                field.name == "org" for field in model._meta.concrete_fields):
            yield model, model_admin


def _flow(org, name="Moved"):
    return make_workflow(org, [("transform", {"expression": "input"})], name=name)


BUILDERS = {
    Workflow: lambda cast: _flow(cast.org_a),
    Team: lambda cast: Team.objects.create(org=cast.org_a, name="Ops"),
    Provider: lambda cast: Provider.objects.create(org=cast.org_a, name="p-a", model="m",
                                                   base_url="https://a.example/v1"),
    Intake: lambda cast: intake_create(org=cast.org_a, workflow=_flow(cast.org_a, "Hooked"),
                                       name="Hook", created_by=cast.admin_a),
    Secret: lambda cast: secret_create(org=cast.org_a, name="TOKEN", value="v",
                                       allowed_hosts=["a.example"]),
    ApiKey: lambda cast: apikey_issue(
        org=cast.org_a, label="k", user=cast.admin_a).key,
    AuditEvent: lambda cast: audit_record(event="x.y", org=cast.org_a, actor_label="a"),
    Membership: lambda cast: Membership.objects.get(user=cast.admin_a, org=cast.org_a),
    # Its org is its workflow's, copied for the fair claim; its page edits nothing.
    WorkItem: lambda cast: work_item_create(workflow=_flow(cast.org_a, "Worked"), input={}),
}


class _FormFields(HTMLParser):
    """The name/value pairs a browser would submit from the page's change form."""

    def __init__(self):
        super().__init__()
        self.data: dict[str, str] = {}
        self._in_form = False
        self._textarea = self._select = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id", "").endswith("_form"):
            self._in_form = True
        if not self._in_form or (not attrs.get("name") and tag != "option"):
            return
        if tag == "input" and attrs.get("type") not in ("submit", "button", "file"):
            box = attrs.get("type") in ("checkbox", "radio")
            if box and "checked" not in attrs:
                return
            self.data[attrs["name"]] = attrs.get("value") or ("on" if box else "")
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.data[self._textarea] = ""
        elif tag == "select":
            self._select = attrs["name"]
        elif tag == "option" and self._select and "selected" in attrs:
            self.data[self._select] = attrs.get("value", "")

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None


def _form_data(html: str) -> dict[str, str]:
    parser = _FormFields()
    parser.feed(html)
    return {name: value.removeprefix("\n") for name, value in parser.data.items()}


def _admin_of_both(cast):
    user = get_user_model().objects.create_user("both", "both@example.com", "pw",
                                                is_staff=True)
    Membership.objects.create(user=user, org=cast.org_a, role="admin")
    Membership.objects.create(user=user, org=cast.org_b, role="admin")
    return user


def test_every_admin_of_a_model_in_an_org_has_a_builder():
    assert {model for model, _admin in _org_placed_admins()} == set(BUILDERS)


@pytest.mark.parametrize("who", ["admin_of_both", "superuser"])
def test_no_change_page_moves_an_object_to_another_organization(client, cast, who):
    user = (get_user_model().objects.create_superuser("root", "root@example.com", "x")
            if who == "superuser" else _admin_of_both(cast))
    client.force_login(user)
    for model, _model_admin in _org_placed_admins():
        obj = BUILDERS[model](cast)
        meta = model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
        page = client.get(url)
        assert page.status_code == 200, meta.label
        shown = page.context["adminform"].form.fields.get("org")
        assert shown is None or shown.disabled, meta.label  # read-only, or not on the form
        data = {**_form_data(page.content.decode()), "org": str(cast.org_b.pk), "_save": "1"}
        client.post(url, data)
        assert model.objects.get(pk=obj.pk).org_id == cast.org_a.pk, meta.label


def test_a_moved_workflow_took_no_work_history_to_the_other_orgs_auditors(client, cast):
    """The reported case: org A's workflow moved to org B by an admin of both, and B's
    auditor, with no role in A, opening A's work item."""
    workflow = _flow(cast.org_a)
    intake = intake_create(org=cast.org_a, workflow=workflow, name="A's intake",
                           created_by=cast.admin_a)
    with transaction.atomic():
        item = work_item_create(workflow=workflow, input={"private": "A-only-7Qx"},
                                intake=intake)
    auditor_b = get_user_model().objects.create_user("auditor_b", is_staff=True)
    Membership.objects.create(user=auditor_b, org=cast.org_b, role="auditor")

    client.force_login(_admin_of_both(cast))
    url = reverse("admin:workflows_workflow_change", args=[workflow.pk])
    data = {**_form_data(client.get(url).content.decode()), "org": str(cast.org_b.pk),
            "_save": "1"}
    assert client.post(url, data).status_code == 302  # the rest of the form still saves
    assert Workflow.objects.get(pk=workflow.pk).org_id == cast.org_a.pk

    client.force_login(auditor_b)
    page = client.get(reverse("admin:workflows_workitem_change", args=[item.pk]))
    assert page.status_code == 404
    assert not WorkItem.objects.filter(workflow__org=cast.org_b).exists()


def test_a_name_taken_in_the_organization_is_still_a_form_error(client, cast):
    """The organization stays in the form (disabled): its per-organization unique names are
    still checked there, not left to the database (an IntegrityError, a 500)."""
    _flow(cast.org_a, "Taken")
    workflow = _flow(cast.org_a, "Mine")
    client.force_login(cast.admin_a)
    url = reverse("admin:workflows_workflow_change", args=[workflow.pk])
    data = {**_form_data(client.get(url).content.decode()), "slug": "taken", "_save": "1"}
    response = client.post(url, data)
    assert response.status_code == 200
    assert "slug" in str(response.context["errors"]) or "already exists" in str(
        response.context["errors"])
    assert Workflow.objects.get(pk=workflow.pk).slug == "mine"
