"""Two people editing one object: a change form sent after someone else saved the object
(or a row of an editable inline) since it was opened is refused, not applied over theirs.

Before: the second save won silently. An admin who opened an intake, went for coffee and
saved a new rate limit put back the callback URL a colleague had just changed (and the
audit log recorded that as the admin's own change of the URL). Every change page carries
the version it was opened on; traffic (a key's last use) does not count as a change.
"""

import pytest
from django.contrib.auth import get_user_model
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils import timezone

from auxot.models import AuditEvent
from intakes.models import Intake
from tests.admin.test_admin_org_fixed import BUILDERS, _form_data, _org_placed_admins
from workflows.models import Step

pytestmark = pytest.mark.django_db

STALE = "Someone else saved this"


def _url(obj) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def _opened(client, obj) -> dict[str, str]:
    page = client.get(_url(obj))
    assert page.status_code == 200, obj._meta.label
    return {**_form_data(page.content.decode()), "_save": "1"}


def _stored(obj) -> dict:
    fresh = type(obj)._default_manager.get(pk=obj.pk)
    return {name: value for name, value in model_to_dict(fresh).items()}


def test_every_editable_change_page_carries_its_version_and_a_stale_one_changes_nothing(
        client, cast):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    client.force_login(root)
    checked = []
    for model, model_admin in _org_placed_admins():
        obj = BUILDERS[model](cast)
        data = _opened(client, obj)
        request = client.get(_url(obj)).wsgi_request
        if not model_admin.has_change_permission(request, obj):
            assert "_auxot_version" not in data, model._meta.label
            continue
        assert len(data.get("_auxot_version", "")) == 64, model._meta.label
        before = _stored(obj)
        response = client.post(_url(obj), {**data, "_auxot_version": "0" * 64})
        assert response.status_code == 200 and STALE in response.content.decode(), (
            model._meta.label)
        assert _stored(obj) == before, model._meta.label
        response = client.post(_url(obj), data)  # its own version: no refusal
        assert STALE not in response.content.decode(), model._meta.label
        checked.append(model._meta.label)
    assert {"workflows.Workflow", "intakes.Intake", "workflows.Provider", "auxot.Team",
            "auxot.Secret"} <= set(checked)


def test_a_save_over_a_colleagues_newer_save_is_refused_and_audited_as_nothing(client, cast):
    intake = BUILDERS[Intake](cast)
    colleague = get_user_model().objects.create_superuser("colleague", "c@example.com", "x")
    client.force_login(cast.admin_a)
    mine = _opened(client, intake)

    client.force_login(colleague)
    theirs = _opened(client, intake)
    theirs["callback_url"] = "https://hooks.example.com/new"
    assert client.post(_url(intake), theirs).status_code == 302
    changed = AuditEvent.objects.filter(event="intake.changed").count()

    client.force_login(cast.admin_a)
    mine["rate_limit_per_window"] = "7"
    response = client.post(_url(intake), mine)
    assert response.status_code == 200
    assert STALE in response.content.decode()
    intake.refresh_from_db()
    assert intake.callback_url == "https://hooks.example.com/new"
    assert intake.rate_limit_per_window != 7
    assert AuditEvent.objects.filter(event="intake.changed").count() == changed
    # The refused page keeps the version it was opened on: sending it again is refused too.
    again = _form_data(response.content.decode())
    assert again["_auxot_version"] == mine["_auxot_version"]
    assert STALE in client.post(_url(intake), {**again, "_save": "1"}).content.decode()
    # Reloaded, the change goes through on top of the colleague's.
    fresh = _opened(client, intake)
    fresh["rate_limit_per_window"] = "7"
    assert client.post(_url(intake), fresh).status_code == 302
    intake.refresh_from_db()
    assert (intake.rate_limit_per_window, intake.callback_url) == (
        7, "https://hooks.example.com/new")


def test_a_step_changed_since_the_workflow_page_was_opened_makes_its_save_stale(client,
                                                                               cast):
    from workflows.models import Workflow

    workflow = BUILDERS[Workflow](cast)
    client.force_login(cast.admin_a)
    data = _opened(client, workflow)
    step = Step.objects.get(workflow=workflow)
    Step.objects.filter(pk=step.pk).update(config={"expression": "input.changed"})
    response = client.post(_url(workflow), {**data, "name": "Renamed"})
    assert response.status_code == 200 and STALE in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.name != "Renamed"
    assert Step.objects.get(pk=step.pk).config == {"expression": "input.changed"}


def test_what_the_page_does_not_edit_is_no_edit(client, cast):
    """The engine turning an intake's callbacks off after failures (a field its form does not
    edit) while the page is open: the admin's save still goes through, and keeps it."""
    intake = BUILDERS[Intake](cast)
    client.force_login(cast.admin_a)
    data = _opened(client, intake)
    disabled_at = timezone.now()
    Intake.objects.filter(pk=intake.pk).update(callback_disabled_at=disabled_at)
    data["name"] = "Renamed hook"
    response = client.post(_url(intake), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    intake.refresh_from_db()
    assert (intake.name, intake.callback_disabled_at) == ("Renamed hook", disabled_at)
