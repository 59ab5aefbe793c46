"""A changelist's filters list only what the user's own rows point at: Django's relation
filter lists every row of the related model, so another organization's workflows, intakes,
teams and name would show in the sidebar. Enumerated over every admin and every relation in
its `list_filter`."""

import pytest
from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth import get_user_model
from django.urls import reverse

from auxot.admin_base import OrgScopedAdmin
from auxot.models import Team
from auxot.secrets import secret_create
from intakes.callbacks import callback_delivery_create
from intakes.services import intake_create
from tests.callback_helpers import finished_item
from tests.conftest import make_workflow
from workflows.models import Provider

pytestmark = pytest.mark.django_db
MARK = "Zq7Outsider"  # in every name of org B's rows


def _relation_filters():
    """(admin, field path) for every relation filter of every org-scoped admin."""
    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, OrgScopedAdmin):
            continue
        for entry in model_admin.list_filter:
            name = entry if isinstance(entry, str) else (
                entry[0] if isinstance(entry, tuple) else None)
            if name and get_fields_from_path(model, name)[-1].is_relation:
                yield model_admin, name


@pytest.fixture
def worlds(cast, receiver):
    """Each org has a row of every kind a changelist filters by, org B's all named MARK."""
    cast.org_b.name = f"Org B {MARK}"
    cast.org_b.save()
    for org, label, user in ((cast.org_a, "Own", cast.admin_a),
                             (cast.org_b, MARK, cast.outsider_b)):
        team = Team.objects.create(org=org, name=f"Team {label}")
        workflow = make_workflow(org, [("transform", {"expression": "input"})],
                                 name=f"Flow {label}")
        intake = intake_create(org=org, workflow=workflow, name=f"Intake {label}",
                               created_by=user, team=team,
                               callback_url=receiver.url_for("/hook"))
        callback_delivery_create(work_item=finished_item(intake))
        secret_create(org=org, name=f"S_{label}", value="v", allowed_hosts=["a.example"])
        Provider.objects.create(org=org, name=f"p-{label.lower()}",
                                base_url="https://a.example/v1", model="m")
    return cast


def test_every_relation_filter_is_limited_to_the_users_rows():
    found = list(_relation_filters())
    assert len(found) >= 5, found  # the test follows the admins; it must find them
    for model_admin, name in found:
        entries = [entry for entry in model_admin.get_list_filter(request=None)
                   if isinstance(entry, tuple) and entry[0] == name]
        assert entries == [(name, admin.RelatedOnlyFieldListFilter)], (model_admin, name)


@pytest.mark.parametrize("who", ["admin_a", "member_a", "auditor_a"])
def test_no_changelist_names_another_orgs_rows(client, worlds, who):
    client.force_login(getattr(worlds, who))
    seen = 0
    for model_admin in admin.site._registry.values():  # every changelist, filtered or not
        meta = model_admin.model._meta
        page = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        if page.status_code == 403:
            continue  # not this role's page
        assert page.status_code == 200, meta.label
        seen += 1
        content = page.content.decode()
        assert MARK not in content, (who, meta.label)
    assert seen >= 8

def test_a_filter_still_lists_the_users_own_rows(client, worlds):
    client.force_login(worlds.admin_a)
    content = client.get(reverse("admin:workflows_workitem_changelist")).content.decode()
    assert "Flow Own" in content and "Intake Own" in content and "Team Own" in content


def test_a_superuser_sees_every_orgs_rows(client, worlds):
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "x"))
    content = client.get(reverse("admin:workflows_workitem_changelist")).content.decode()
    assert f"Flow {MARK}" in content and "Flow Own" in content
