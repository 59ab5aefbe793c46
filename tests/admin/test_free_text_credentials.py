"""A credential pasted into a tenant's free text (a workflow's or a step's name, a
description, a team's or an intake's name, a key's label, a provider's model, a secret's
hosts) would be shown to every member and auditor, on every page and in the audit log: it
is refused when saved, naming the field and the credential's kind, and the page that says
so does not show it back.

The fields are not listed by hand: every form of every registered admin that a tenant's
admin may open (add pages, change pages, their inlines) is introspected, and each text field
on it is either planted here with every credential format or allowed, with a reason, in
`auxot.admin_base.CREDENTIAL_TEXT_ALLOWED`. A text field added later without that decision
fails `test_every_text_field_a_tenant_types_into_is_decided`.
"""

import io
import json

import pytest
from django.apps import apps
from django.contrib import admin
from django.core.management import CommandError, call_command
from django.test import RequestFactory
from django.urls import reverse

from apikeys.models import ApiKey
from apikeys.services import apikey_issue
from auxot.admin_base import (
    CREDENTIAL_TEXT_ALLOWED,
    CredentialFreeFormMixin,
    OrgScopedAdmin,
    credential_text_field,
)
from auxot.errors import ApplicationError
from auxot.models import AuditEvent, Secret, Team
from intakes.models import Intake
from intakes.services import intake_create, intake_update
from tests.admin.test_admin_org_fixed import BUILDERS, _form_data
from tests.auxot.test_credential_formats import SAMPLES
from tests.conftest import make_workflow
from workflows.models import Provider, Step, Workflow

pytestmark = pytest.mark.django_db

FORMATS = {kind: values[0] for kind, values in SAMPLES.items()}
STEP_ROW = "steps-0-"  # the workflow page's first step row


def _pieces(value: str) -> list[str]:
    tail = value.strip()[-40:]
    return [tail[i:i + 10] for i in range(len(tail) - 9)]


def _shows(text: str, value: str) -> bool:
    return any(piece in text for piece in _pieces(value))


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user, request.session = user, {}
    return request


def _tenant_forms(cast):
    """(page, model label, form class) of every form a tenant's admin may save: each
    org-scoped admin's add form and change form (of an object BUILDERS makes), and the
    editable inlines on them. `page` is ("add" | "change", model)."""
    request = _request(cast.admin_a)
    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, OrgScopedAdmin):
            continue
        pages = []
        if model_admin.has_add_permission(request):
            pages.append(("add", None))
        obj = BUILDERS[model](cast) if model in BUILDERS else None
        if obj is not None and model_admin.has_change_permission(request, obj):
            pages.append(("change", obj))
        for action, target in pages:
            yield (action, model), model._meta.label, model_admin.get_form(
                request, target, change=action == "change")
            for inline in model_admin.get_inline_instances(request, target):
                if inline.has_add_permission(request, target) or inline.has_change_permission(
                        request, target):
                    yield (action, model), inline.model._meta.label, inline.get_formset(
                        request, target).form


# How each text field a tenant types into is planted: {(model label, field): page actions}.
# Every one is refused (the validator `credential_free_form` gives every admin form).
PLANTED = {
    ("auxot.Team", "name"): {"add", "change"},
    ("auxot.Secret", "name"): {"add"},  # read-only once made (steps reference it by name)
    ("auxot.Secret", "hosts"): {"add", "change"},
    ("apikeys.ApiKey", "label"): {"add"},  # a key's page is read-only
    ("workflows.Workflow", "name"): {"add", "change"},
    ("workflows.Workflow", "slug"): {"add", "change"},
    ("workflows.Workflow", "description"): {"add", "change"},
    ("workflows.Step", "name"): {"add", "change"},  # a row of the workflow's pages
    ("workflows.Provider", "name"): {"add", "change"},
    ("workflows.Provider", "model"): {"add", "change"},
    ("workflows.Provider", "api_key_secret"): {"add", "change"},
    ("workflows.Provider", "api_key_env"): {"add", "change"},
    ("intakes.Intake", "name"): {"add", "change"},
    ("intakes.Intake", "redact_paths"): {"add", "change"},
}


def test_every_text_field_a_tenant_types_into_is_decided(cast):
    found: dict[tuple[str, str], set[str]] = {}
    forms = list(_tenant_forms(cast))
    for (action, _model), label, form in forms:
        assert issubclass(form, CredentialFreeFormMixin), (action, label)
        for name, field in form.base_fields.items():
            key = f"{label}.{name}"
            if credential_text_field(form._meta.model, name, field):
                found.setdefault((label, name), set()).add(action)
            else:
                assert key in CREDENTIAL_TEXT_ALLOWED or not hasattr(field, "max_length") \
                    or field.disabled, key
    assert found == PLANTED
    # Every allowed field is one a tenant's form holds (no stale reasons).
    on_forms = {f"{label}.{name}" for _, label, form in forms for name in form.base_fields}
    assert set(CREDENTIAL_TEXT_ALLOWED) <= on_forms


def test_no_other_admin_takes_a_tenants_text(cast):
    """Django's users and groups, django-q2's schedules and queue: superusers' pages."""
    request = _request(cast.admin_a)
    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, OrgScopedAdmin):
            assert not model_admin.has_add_permission(request), model
            assert not model_admin.has_change_permission(request), model


# --- planting: every field and every format, through the page as a browser submits it ----------
def _workflow(cast):
    return make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Planted")


# What a valid add form needs besides the page's own initial data (its required fields).
ADD_DATA = {
    Team: lambda cast: {"org": str(cast.org_a.pk), "name": "Support"},
    Secret: lambda cast: {"org": str(cast.org_a.pk), "name": "HOOK", "value": "v-123456",
                          "hosts": "api.example.com"},
    ApiKey: lambda cast: {"org": str(cast.org_a.pk), "label": "ci", "kind": "user"},
    Workflow: lambda cast: {"org": str(cast.org_a.pk), "name": "New", "slug": "new",
                            "description": "Routes tickets."},
    Provider: lambda cast: {"org": str(cast.org_a.pk), "name": "gw", "model": "gpt-x",
                            "base_url": "https://llm.example.com/v1",
                            "concurrency_limit": "2", "timeout_seconds": "30"},
    Intake: lambda cast: {"workflow": str(_workflow(cast).pk), "name": "Tickets",
                          "redact_paths": "[]"},
}
# A step row is planted on the workflow's change page (the add page's rows are that form).
CASES = sorted((model, name, action) for (model, name), actions in PLANTED.items()
               for action in actions if (model, action) != ("workflows.Step", "add"))


def _planted_text(name: str, value: str) -> str:
    if name == "redact_paths":
        return json.dumps(["$.customer.email", value])
    if name == "hosts":
        return f"api.example.com\n{value}"
    return value


def _errors(response) -> list[str]:
    forms = [response.context["adminform"].form] + [
        form for formset in response.context["inline_admin_formsets"]
        for form in formset.formset.forms]
    return [message for form in forms for messages in form.errors.values()
            for message in messages]


def _stored(model, obj, name):
    if name == "hosts":
        return list(Secret.objects.get(pk=obj.pk).allowed_hosts)
    return getattr(model.objects.get(pk=obj.pk), name)


@pytest.mark.parametrize(("label", "name", "action"), CASES,
                         ids=[f"{label}.{name}-{action}" for label, name, action in CASES])
def test_a_credential_typed_into_a_text_field_is_refused_and_not_shown_back(client, cast, label,
                                                                          name, action):
    model = apps.get_model(label)
    page_model = Workflow if model is Step else model
    meta = page_model._meta
    client.force_login(cast.admin_a)
    if action == "add":
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_add")
        obj = None
        data = {**_form_data(client.get(url).content.decode()), **ADD_DATA[model](cast)}
    else:
        obj = _workflow(cast) if model is Step else BUILDERS[model](cast)
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
        data = _form_data(client.get(url).content.decode())
    key = f"{STEP_ROW}{name}" if model is Step else name
    target = Step.objects.get(workflow=obj) if model is Step else obj
    assert key in data, sorted(data)
    rows, audit = model.objects.count(), AuditEvent.objects.count()
    before = _stored(model, target, name) if target is not None else None
    field_label = None
    for credential, value in FORMATS.items():
        response = client.post(url, {**data, key: _planted_text(name, value), "_save": "1"})
        assert response.status_code == 200, (credential, response.status_code)
        errors = _errors(response)
        mine = [m for m in errors if f": {'an' if credential[0] in 'AEIOU' else 'a'} "
                f"{credential} typed here is shown to everyone" in m]
        assert mine, (credential, errors)
        field_label = field_label or mine[0].split(":")[0]
        assert not _shows(response.content.decode(), value), credential
        assert model.objects.count() == rows and AuditEvent.objects.count() == audit
        if target is not None:
            assert _stored(model, target, name) == before
    form_field = response.context["adminform"].form.fields.get(name) if model is not Step \
        else None
    if form_field is not None and form_field.label:
        assert field_label == str(form_field.label)
    # The same page saves once the text holds no credential: the credential was the reason.
    ordinary = {"redact_paths": '["$.customer.email"]', "hosts": "api.example.com",
                "slug": "planted-2", "api_key_secret": "", "api_key_env": ""}.get(
        name, {Provider: "gateway-2", Secret: "HOOK_2"}.get(model, "Ordinary text 2"))
    saved = client.post(url, {**data, key: ordinary, "_save": "1"})
    assert saved.status_code == 302, _errors(saved)


def test_a_placeholder_and_prose_are_saved(client, cast):
    client.force_login(cast.admin_a)
    url = reverse("admin:workflows_workflow_add")
    data = {**_form_data(client.get(url).content.decode()), **ADD_DATA[Workflow](cast),
            "description": "Posts to our Slack webhook (kept as the secret SLACK_HOOK); "
                           "GitHub tokens look like ghp_" + "x" * 36 + " and never go here."}
    assert client.post(url, {**data, "_save": "1"}).status_code == 302
    assert Workflow.objects.get(slug="new").description == data["description"]


def test_a_chat_webhook_is_a_callback_url_an_intake_may_have(client, cast):
    """An allowed URL field: a Slack webhook as the intake's callback URL is saved (and
    shown only redacted outside the form that edits it)."""
    intake = BUILDERS[Intake](cast)
    webhook = FORMATS["Slack webhook URL"]
    changed = intake_update(intake=intake, actor=cast.admin_a, changes={"callback_url": webhook})
    assert changed == ["callback_url"]
    assert Intake.objects.get(pk=intake.pk).callback_url == webhook


# --- the same rule where no admin form is in front: services, the shell command -------------
def test_the_services_refuse_a_credential_in_a_name_or_a_label(cast):
    token = FORMATS["GitHub token"]
    workflow, intake = _workflow(cast), BUILDERS[Intake](cast)
    for call in (
        lambda: apikey_issue(org=cast.org_a, label=f"ci {token}", user=cast.admin_a),
        lambda: intake_create(org=cast.org_a, workflow=workflow, name=token),
        lambda: intake_create(org=cast.org_a, workflow=workflow, name="ok",
                              options={"redact_paths": [f"$.{token}"]}),
        lambda: intake_update(intake=intake, changes={"name": token}),
        lambda: intake_update(intake=intake, changes={"redact_paths": [f"$['{token}']"]}),
    ):
        rows = (ApiKey.objects.count(), Intake.objects.count(), AuditEvent.objects.count())
        with pytest.raises(ApplicationError) as refused:
            call()
        assert refused.value.code == "validation_failed"
        assert "a GitHub token typed here" in refused.value.detail
        assert token not in refused.value.detail
        assert (ApiKey.objects.count(), Intake.objects.count(),
                AuditEvent.objects.count()) == rows
    assert not Intake.objects.filter(name=token).exists()


def test_apikey_issue_refuses_a_credential_in_the_label(cast, capsys):
    token = FORMATS["Slack token"]
    with pytest.raises(CommandError) as refused:
        call_command("apikey_issue", "--org", cast.org_a.slug, "--user", "admin_a",
                     "--label", f"bot {token}")
    assert str(refused.value).startswith("label: a Slack token typed here")
    assert token not in str(refused.value) + "".join(capsys.readouterr())
    assert not ApiKey.objects.exists()


def test_team_name_of_a_credential_is_refused_on_its_change_page_too(client, cast):
    """The change page of an existing team: the stored name stays as it was."""
    team = Team.objects.get(pk=cast.team_a.pk)
    client.force_login(cast.admin_a)
    url = reverse("admin:auxot_team_change", args=[team.pk])
    data = _form_data(client.get(url).content.decode())
    response = client.post(url, {**data, "name": f"Ops {FORMATS['npm token']}", "_save": "1"})
    assert response.status_code == 200
    assert Team.objects.get(pk=team.pk).name == "Platform"
    assert "Ops REDACTED" in response.content.decode()  # the rest of the text is kept


# --- older rows: saved before the rule, listed by secrets_check -------------------------------
def test_secrets_check_reads_every_field_the_forms_refuse_a_credential_in():
    from intakes.management.commands.secrets_check import FREE_TEXT

    assert set(FREE_TEXT) == set(PLANTED)


def _older_row(cast, model):
    if model is Step:
        return _workflow(cast).steps.get()
    return BUILDERS[model](cast)


@pytest.mark.parametrize("key", sorted(PLANTED), ids=lambda key: f"{key[0]}.{key[1]}")
def test_secrets_check_lists_a_credential_saved_before_the_rule_without_its_value(cast, key):
    """A name, label or host list saved before credentials were refused there still shows
    it to every viewer: secrets_check lists the row (organization, model, id, field and the
    credential's kind) and exits 1, and no line holds the value."""
    from intakes.management.commands.secrets_check import FREE_TEXT

    model, attribute, _ = FREE_TEXT[key]
    row = _older_row(cast, model)
    value = FORMATS["GitHub token"]
    stored = [f"api.{value}.example"] if attribute == "allowed_hosts" else (
        [f"$.{value}"] if attribute == "redact_paths" else f"ops {value}")
    model.objects.filter(pk=row.pk).update(**{attribute: stored})
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("secrets_check", stdout=out, stderr=err)
    assert exited.value.code == 1
    lines = [line for line in out.getvalue().splitlines() if f"{key[0]} {row.pk} " in line]
    assert lines == [f"org {cast.org_a.slug}  {key[0]} {row.pk}  {key[1]}: a GitHub token "
                     "typed here is shown to everyone who may view it (members, auditors, "
                     "the audit log)"]
    assert not _shows(out.getvalue() + err.getvalue(), value)
