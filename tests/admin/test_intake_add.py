"""Settings → Intakes → Add intake keeps everything its form asks for."""

import re

import pytest

from auxot.errors import ApplicationError
from auxot.models import AuditEvent
from intakes.models import Intake
from intakes.services import intake_create
from workflows.models import Workflow

ADD = "/admin/intakes/intake/add/"


def test_the_add_page_keeps_the_retention_and_redaction_it_shows(admin_client, cast,
                                                                  workflow_a):
    """The add page shows the Retention fields; what is typed there is what the intake has
    (they were dropped: an intake added with redact paths stored bodies unredacted)."""
    response = admin_client.post(ADD, {
        "workflow": workflow_a.pk, "name": "Redacting", "callback_url": "",
        "payload_retention_days": "5", "item_retention_days": "30",
        "redact_paths": '["$.customer.email"]'})
    assert response.status_code == 302, response.content[:2000]
    intake = Intake.objects.get(name="Redacting")
    assert (intake.payload_retention_days, intake.item_retention_days) == (5, 30)
    assert intake.redact_paths == ["$.customer.email"]
    created = AuditEvent.objects.get(event="intake.created", object_id=str(intake.pk))
    assert created.extra["settings"] == ["item_retention_days", "payload_retention_days",
                                         "redact_paths"]


def test_the_add_page_left_empty_keeps_the_defaults(admin_client, cast, workflow_a):
    response = admin_client.post(ADD, {"workflow": workflow_a.pk, "name": "Plain",
                                       "callback_url": "", "redact_paths": "[]"})
    assert response.status_code == 302, response.content[:2000]
    intake = Intake.objects.get(name="Plain")
    assert (intake.payload_retention_days, intake.item_retention_days) == (None, None)
    assert intake.redact_paths == []


@pytest.mark.parametrize("options", [{"redact_paths": ["not a path"]},
                                     {"item_retention_days": 10**6},
                                     {"active": False}])
def test_intake_create_checks_its_options_as_an_edit_does(cast, workflow_a, options):
    with pytest.raises(ApplicationError):
        intake_create(org=cast.org_a, workflow=workflow_a, name="Checked", options=options)
    assert not Intake.objects.filter(name="Checked").exists()


def test_the_workflows_intakes_panel_says_what_an_intake_is(client, cast, workflow_a,
                                                           intake_a):
    """Path B (workflow → Intakes → add): the panel's tooltip speaks of webhook URLs that
    external services can call, for whoever reads the page, and on its Add intake link."""
    tooltip = ("Webhook URLs external services can call to start this workflow: "
               "POST /v1/intake/{intake_id} with an API key.")  # whole: no tag stripped
    client.force_login(cast.admin_a)
    html = client.get(f"/admin/workflows/workflow/{workflow_a.pk}/change/").content.decode()
    assert re.search(r'<th class="column-intake_link">Intake\s*<img [^>]*class="help '
                     rf'help-tooltip"[^>]*title="{re.escape(tooltip)}"', html), html
    assert f'class="addlink" title="{tooltip}">Add intake</a>' in html
    client.force_login(cast.auditor_a)
    html = client.get(f"/admin/workflows/workflow/{workflow_a.pk}/change/").content.decode()
    assert tooltip in html and "Add intake</a>" not in html


def test_an_intake_on_a_deactivated_workflow_says_callers_get_404(client, cast, workflow_a,
                                                                 intake_a):
    """The add form offers deactivated workflows too, and the API's 404 cannot say which
    check failed: the intake's page says its workflow is off, and only then."""
    client.force_login(cast.admin_a)
    page = f"/admin/intakes/intake/{intake_a.pk}/change/"
    warning = "is deactivated: every caller gets 404 on this intake"
    assert warning not in client.get(page).content.decode()
    Workflow.objects.filter(pk=workflow_a.pk).update(active=False)
    html = client.get(page).content.decode()
    assert f"Its workflow “{workflow_a.name}” {warning}" in html, html
