"""A changelist's filters list only what the user's own rows point at: Django's relation
filter lists every row of the related model, so another organization's workflows, intakes,
teams and name would show in the sidebar. Enumerated over every admin and every relation in
its `list_filter`."""

import re

import pytest
from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth import get_user_model
from django.urls import reverse

from auxot.admin_base import OrgRelatedFieldListFilter, OrgScopedAdmin
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
    """Each org has two rows of every kind a changelist filters by (so that every filter
    shows), org B's all named MARK."""
    cast.org_b.name = f"Org B {MARK}"
    cast.org_b.save()
    for org, label, user in ((cast.org_a, "Own", cast.admin_a),
                             (cast.org_b, MARK, cast.outsider_b)):
        for n in (1, 2):
            team = Team.objects.create(org=org, name=f"Team {label} {n}")
            workflow = make_workflow(org, [("transform", {"expression": "input"})],
                                     name=f"Flow {label} {n}")
            intake = intake_create(org=org, workflow=workflow, name=f"Intake {label} {n}",
                                   created_by=user, team=team,
                                   callback_url=receiver.url_for("/hook"))
            callback_delivery_create(work_item=finished_item(intake))
            secret_create(org=org, name=f"S_{label}_{n}", value="v",
                          allowed_hosts=["a.example"])
            Provider.objects.create(org=org, name=f"p-{label.lower()}-{n}",
                                    base_url="https://a.example/v1", model="m")
    return cast


def _sidebar(content: str) -> str:
    """The changelist's filter sidebar alone."""
    match = re.search(r'<nav id="changelist-filter".*?</nav>', content, re.S)
    assert match, "no filter sidebar"
    return match.group(0)


def test_every_relation_filter_is_limited_to_the_users_rows():
    found = list(_relation_filters())
    assert len(found) >= 5, found  # the test follows the admins; it must find them
    for model_admin, name in found:
        entries = [entry for entry in model_admin.get_list_filter(request=None)
                   if isinstance(entry, tuple) and entry[0] == name]
        assert entries == [(name, OrgRelatedFieldListFilter)], (model_admin, name)


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
    sidebar = _sidebar(client.get(reverse("admin:workflows_workitem_changelist")
                                  ).content.decode())
    for name in ("Flow Own 1", "Flow Own 2", "Intake Own 1", "Intake Own 2", "Team Own 1",
                 "Team Own 2"):
        assert name in sidebar
    assert MARK not in sidebar


def test_a_superuser_sees_every_orgs_rows(client, worlds):
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "x"))
    sidebar = _sidebar(client.get(reverse("admin:workflows_workitem_changelist")
                                  ).content.decode())
    assert f"Flow {MARK} 1" in sidebar and "Flow Own 1" in sidebar


def test_a_filter_costs_one_query_on_the_related_table_not_a_scan(client, worlds):
    """A scoped DISTINCT over every work item, per filter, on every page load would grow
    with the history; the filter reads the related table by organization."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(worlds.admin_a)
    with CaptureQueriesContext(connection) as queries:
        client.get(reverse("admin:workflows_workitem_changelist"))
    columns = ('"workflows_workitem"."workflow_id"', '"workflows_workitem"."intake_id"',
               '"team_id"')
    selects = [q["sql"].split("FROM")[0] for q in queries.captured_queries]
    distinct = [sql for sql in selects
                if "DISTINCT" in sql.upper() and any(column in sql for column in columns)]
    assert distinct == []
