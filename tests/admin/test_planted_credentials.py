"""Credentials planted in every value a tenant or a caller configures that can carry one
reach no page, audit row or API answer of anyone but who edits it (an org admin, in the form
that edits it), and never an audit row's extras.

The candidates, and where each is kept from view:
- an intake's callback URL and a caller's `Auxot-Callback-Url` (path and query tokens; the
  deliveries and attempts copy them): shown through `url_redact`;
- an `http` step's `url` and the URLs in its expressions (`url_expression`): the same;
- an `http` step's credential headers and its body's credential fields typed in as constants
  (older steps; new ones are refused when saved): REDACTED for viewers, cut from the output;
- a `secret_headers` secret and a `url_secret`: write-only secrets, cut from the output;
- a provider's base URL (older rows with a query; new ones are refused): `url_redact`;
- API keys and intake signing secrets: shown once, to whoever made them.
- a credential known by its format (a GitHub token, a private key, our own API key) in any
  string of any step's config (a prompt, instructions, an expression's constant) or a JSON
  Schema: refused when saved, REDACTED for viewers in older rows
  (test_planted_credential_formats.py).
- a credential known by its format in a tenant's free text (names, labels, descriptions, a
  provider's model, a secret's hosts): refused when saved, in every admin form and the
  services behind them (test_free_text_credentials.py).
Other free text (approval comments, reasons, a caller's input) is shown as written.
"""

import json
import re

import pytest
from django.contrib import admin
from django.urls import reverse

from apikeys.services import apikey_issue
from auxot.models import AuditLogEntry
from auxot.secrets import secret_create
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from intakes.models import CallbackDelivery, Intake
from intakes.services import intake_create, intake_update
from tests.conftest import make_workflow, trigger
from workflows.batch import work_item_process
from workflows.models import Provider, WorkItem

pytestmark = pytest.mark.django_db

PLANTED = {
    "callback_path": "CbPathT0ken11", "callback_query": "CbQueryT0ken12",
    "changed_callback": "CbChangedT0k13", "caller_callback": "CallerT0ken14",
    "step_url_path": "StepPathT0k15", "step_url_query": "StepQueryT0k16",
    "url_expression": "UrlExprT0ken17", "header_literal": "HeaderT0ken18",
    "header_json": "HeaderJs0nT19", "body_literal": "BodyT0ken20",
    "secret_value": "SecretVa1ue21", "url_secret": "UrlSecretT0k22",
    "provider_path": "ProvPathT0k23", "provider_query": "ProvQueryT0k24",
}


def _leaks(text: str) -> dict[str, list[str]]:
    return {name: re.findall(rf".{{0,120}}{token}.{{0,40}}", text)
            for name, token in PLANTED.items() if token in text}


@pytest.fixture
def planted(cast, fake_server, receiver, api):
    p = PLANTED
    fake_server.script = []  # every request answered 200, echoing the body it got
    secret_create(org=cast.org_a, name="CRM_TOKEN", value=p["secret_value"],
                  allowed_hosts=["127.0.0.1"], actor=cast.admin_a)
    secret_create(org=cast.org_a, name="CHAT_HOOK", allowed_hosts=["127.0.0.1"],
                  value=f"{fake_server.url}/services/{p['url_secret']}", actor=cast.admin_a)
    # Saved as a step saved before typed credentials were refused (no clean()).
    workflow = make_workflow(cast.org_a, [
        ("http", {"method": "POST",
                  "url": f"{fake_server.url}/hook/{p['step_url_path']}?token={p['step_url_query']}",
                  "headers": {"Authorization": f"'Bearer {p['header_literal']}'",
                              "X-Api-Key": f'`"{p["header_json"]}"`'},
                  "secret_headers": {"X-Crm": {"secret": "CRM_TOKEN"}},
                  "body": f"{{n: input.n, api_key: '{p['body_literal']}'}}"}),
        ("http", {"method": "POST", "url_secret": {"secret": "CHAT_HOOK"}, "body": "previous"}),
        ("http", {"method": "GET", "url_expression":
                  f"join('', ['{fake_server.url}/x?token={p['url_expression']}', ''])"}),
    ], name="Planted")
    Provider.objects.create(org=cast.org_a, name="gateway", model="m", base_url=(
        f"https://llm.example.com/{p['provider_path']}/v1?key={p['provider_query']}"))
    intake = intake_create(
        org=cast.org_a, workflow=workflow, name="Planted", created_by=cast.admin_a,
        callback_url=receiver.url_for(f"/hook/{p['callback_path']}?t={p['callback_query']}"))
    intake_update(intake=intake, actor=cast.admin_a, changes={
        "callback_url": receiver.url_for(f"/hook/{p['changed_callback']}")})
    token = apikey_issue(org=cast.org_a, label="member key", user=cast.member_a).token
    answer = trigger(api, intake.pk, token, {"n": 1}, HTTP_AUXOT_CALLBACK_URL=receiver.url_for(
        f"/caller/{p['caller_callback']}?sig={p['caller_callback']}"))
    assert answer.status_code == 202, answer.content
    item = WorkItem.objects.get(pk=answer.json()["work_id"])
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed", item.error
    delivery = callback_delivery_create(work_item=item)  # on commit, outside a test
    callback_delivery_process(delivery_id=delivery.pk)  # an attempt, with what it answered
    return {"item": item, "intake": intake, "token": token}


def test_the_planted_credentials_were_sent(planted, fake_server):
    """Each one reached the receiver: the world plants what it claims to."""
    sent = json.dumps(fake_server.requests)
    for name in ("step_url_path", "step_url_query", "header_literal", "header_json",
                 "body_literal", "secret_value", "url_secret", "url_expression"):
        assert PLANTED[name] in sent, name
    assert CallbackDelivery.objects.filter(work_item=planted["item"]).exists()


def test_no_audit_row_records_a_planted_credential(planted):
    rows = list(AuditLogEntry.objects.values("event", "extra", "actor_label"))
    assert {"secret.created", "intake.created", "intake.changed",
            "work_item.accepted"} <= {row["event"] for row in rows}
    assert not _leaks(json.dumps(rows, default=str))


def test_the_poll_shows_no_planted_credential(planted, api):
    item, intake = planted["item"], planted["intake"]
    answer = api.get(f"/v1/intake/{intake.pk}/work/{item.pk}",
                     HTTP_AUTHORIZATION=f"Bearer {planted['token']}")
    assert answer.status_code == 200
    assert answer.json()["callback"] is not None
    assert not _leaks(answer.content.decode())


def _pages(client, user) -> list[str]:
    """Every registered model's changelist, and the change page of each of its objects this
    user may open, plus the pages beside them (the audit export, the stuck-poll page)."""
    client.force_login(user)
    pages = [reverse("admin:index"), reverse("admin:auxot_auditevent_export"),
             "/admin/poll-stuck/"]
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        request = client.get(reverse("admin:index")).wsgi_request
        for pk in model_admin.get_queryset(request).values_list("pk", flat=True)[:50]:
            pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_change",
                                 args=[pk]))
    return pages


def _text(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode()


@pytest.mark.parametrize("who", ["auditor_a", "member_a"])
def test_no_page_shows_a_viewer_a_planted_credential(client, cast, planted, who):
    pages = _pages(client, getattr(cast, who))
    assert len(pages) > 20
    opened = 0
    for page in pages:
        response = client.get(page)
        assert response.status_code in (200, 302, 403), (page, response.status_code)
        opened += response.status_code == 200
        assert not _leaks(_text(response)), (who, page, _leaks(_text(response)))
    assert opened > 10


def test_no_page_an_admin_cannot_edit_shows_a_planted_credential(client, cast, planted):
    """The admin edits steps, providers and intakes and sees those whole in the forms that
    edit them; every list, and every page read-only to them (work, deliveries, audit),
    hides the credentials as a viewer's does."""
    checked = 0
    for page in _pages(client, cast.admin_a):
        response = client.get(page)
        assert response.status_code in (200, 302, 403), (page, response.status_code)
        context = getattr(response, "context_data", None) or {}
        if context.get("adminform") is not None and context.get("has_change_permission"):
            continue  # the form that edits it
        checked += 1
        assert not _leaks(_text(response)), (page, _leaks(_text(response)))
    assert checked > 10


def test_every_model_that_can_hold_a_planted_value_is_in_the_world(planted):
    """A new model with a URL field or a step's config must join the world above."""
    from django.apps import apps
    from django.db import models

    from intakes.models import CallbackAttempt
    from workflows.models import Step

    holders = {model for model in apps.get_models()
               if model._meta.app_label in ("auxot", "apikeys", "workflows", "intakes")
               and any(isinstance(field, models.URLField) or field.name in ("config", "url")
                       for field in model._meta.concrete_fields)}
    assert holders == {Intake, WorkItem, CallbackDelivery, CallbackAttempt, Provider, Step}
    assert all(model.objects.exists() for model in holders)


def test_a_step_saved_with_a_typed_credential_opens_and_is_fixed_in_its_form(client, cast):
    """An older step with a constant in its Authorization header: its workflow's page opens
    for the admin, saving it as it is says what to change (the value not quoted), and
    moving the value into a secret reference saves."""
    from tests.admin.test_admin_org_fixed import _form_data
    from workflows.models import Step

    token = PLANTED["header_literal"]
    config = {"method": "POST", "url": "https://api.example.com/x",
              "headers": {"Authorization": f"'Bearer {token}'"}}
    workflow = make_workflow(cast.org_a, [("http", config)], name="Older")
    secret_create(org=cast.org_a, name="API_TOKEN", value=token,
                  allowed_hosts=["api.example.com"])
    client.force_login(cast.admin_a)
    url = reverse("admin:workflows_workflow_change", args=[workflow.pk])
    page = client.get(url)
    assert page.status_code == 200
    data = {**_form_data(page.content.decode()), "_save": "1"}
    refused = client.post(url, data)
    assert refused.status_code == 200  # the form again
    [errors] = [form.errors for formset in refused.context["inline_admin_formsets"]
                for form in formset.formset.forms if form.errors]
    [message] = errors["config"]
    assert message.startswith("headers.Authorization: a credential typed into the step")
    assert token not in message
    assert Step.objects.get(workflow=workflow).config == config
    fixed = {"method": "POST", "url": "https://api.example.com/x",
             "secret_headers": {"Authorization": {"secret": "API_TOKEN", "prefix": "Bearer "}}}
    saved = client.post(url, {**data, "steps-0-config": json.dumps(fixed)})
    assert saved.status_code == 302, saved.content.decode()[-2000:]
    assert Step.objects.get(workflow=workflow).config == fixed
