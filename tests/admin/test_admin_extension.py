"""Pages the workflows admin owns take inlines from other apps through its slots, not by
rewriting the admin registry."""

import re

from django.contrib import admin

from tests.conftest import make_workflow
from workflows.admin import workflow_inlines, workitem_inlines
from workflows.batch import work_item_process
from workflows.models import Step, StepRun
from workflows.services import work_item_create


class ExtraRunsPanel(admin.TabularInline):
    model = StepRun
    extra = 0
    verbose_name_plural = "extra panel from another app"


class ExtraStepsPanel(admin.TabularInline):
    model = Step
    extra = 0
    verbose_name_plural = "extra steps panel from another app"


def test_work_item_page_shows_inlines_added_to_its_slot(admin_client, cast):
    item = work_item_create(workflow=make_workflow(cast.org_a, [("delay", {"seconds": 60})]),
                            input={})
    work_item_process(work_id=item.pk, drain_seconds=0)  # one attempt row for the panel
    url = f"/admin/workflows/workitem/{item.pk}/change/"
    assert "extra panel from another app" not in admin_client.get(url).content.decode()
    workitem_inlines.add(ExtraRunsPanel)
    workitem_inlines.add(ExtraRunsPanel)  # twice: shown once
    try:
        page = admin_client.get(url).content.decode()
    finally:
        workitem_inlines.remove(ExtraRunsPanel)
    headings = re.findall(r'class="inline-heading">\s*([^<]+?)\s*<', page)
    assert headings.count("Extra panel from another app") == 1
    assert headings[0] == "Step timeline (every attempt)"  # its own inlines come first


def test_workflow_page_shows_inlines_added_to_its_slot(admin_client, cast):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    workflow_inlines.add(ExtraStepsPanel)
    try:
        page = admin_client.get(f"/admin/workflows/workflow/{wf.pk}/change/").content.decode()
    finally:
        workflow_inlines.remove(ExtraStepsPanel)
    assert "extra steps panel from another app" in page.lower()


def test_each_workflows_model_has_one_admin_registered():
    from workflows import admin as workflows_admin
    from workflows.models import Approval, Provider, Workflow, WorkItem

    for model, name in [(Workflow, "WorkflowAdmin"), (WorkItem, "WorkItemAdmin"),
                        (Provider, "ProviderAdmin")]:
        assert type(admin.site._registry[model]) is getattr(workflows_admin, name)
    assert not admin.site.is_registered(Approval)  # shown inline on its work item


def test_add_intake_link_sits_under_the_intakes_panel_for_admins_only(client, cast, workflow_a):
    link = f"/admin/intakes/intake/add/?workflow={workflow_a.pk}"
    client.force_login(cast.admin_a)
    page = client.get(f"/admin/workflows/workflow/{workflow_a.pk}/change/").content.decode()
    assert link in page and "Add intake" in page
    client.force_login(cast.auditor_a)
    page = client.get(f"/admin/workflows/workflow/{workflow_a.pk}/change/").content.decode()
    assert link not in page
