"""A callback URL's (or a provider's base URL's) tokens, in its path or its query, reach no
admin page that shows the URL read-only: enumerated over every admin of a model with such a
field, every role, its changelist and its change page. Only the form that edits the URL, for
someone who may change the object, holds it whole."""

import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

from auxot.admin_base import REDACTED_FIELDS, OrgScopedAdmin
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from intakes.models import CallbackDelivery, Intake
from intakes.services import intake_create
from tests.callback_helpers import finished_item
from tests.conftest import make_workflow
from workflows.models import Provider, WorkItem

pytestmark = pytest.mark.django_db
PATH_TOKEN = "T0kenInThePath9x"
QUERY_TOKEN = "qs3cretQ"
# The widget that edits the URL ("Currently: <a>…</a> Change: <input>"): whoever may change
# the intake sees what they edit.
_EDITED = re.compile(r'(<p class="url">[^<]*<a [^>]*>[^<]*</a><br>[^<]*)?'
                     r'<input[^>]*name="(?:callback_url|base_url)"[^>]*>(</p>)?')


def _models_with_redacted_fields() -> set:
    return {model for model, model_admin in admin.site._registry.items()
            if isinstance(model_admin, OrgScopedAdmin)
            and {f.name for f in model._meta.fields} & REDACTED_FIELDS}


@pytest.fixture
def world(cast, receiver):
    url = receiver.url_for(f"/hook/{PATH_TOKEN}?token={QUERY_TOKEN}")
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{echo: input}"})],
                             name="Echo")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Tokens",
                           created_by=cast.admin_a, callback_url=url)
    item = finished_item(intake, callback_url=url)  # a caller's own callback URL
    delivery = callback_delivery_create(work_item=item)
    callback_delivery_process(delivery_id=delivery.pk)  # an attempt row, shown on both pages
    # Saved before a base URL's query was refused: its page still opens, redacted.
    provider = Provider.objects.create(
        org=cast.org_a, name="gateway", model="m",
        base_url=f"https://llm.example.com/{PATH_TOKEN}/v1?key={QUERY_TOKEN}")
    return {Intake: intake, WorkItem: item, CallbackDelivery: delivery, Provider: provider}


def test_every_model_with_a_redacted_field_is_in_the_world(world):
    assert _models_with_redacted_fields() == set(world)


@pytest.mark.parametrize("who", ["auditor_a", "member_a", "admin_a", "root"])
def test_no_page_shows_a_callback_urls_tokens(client, cast, world, who):
    user = (get_user_model().objects.create_superuser("root", "root@example.com", "x")
            if who == "root" else getattr(cast, who))
    client.force_login(user)
    for model, obj in world.items():
        meta, model_admin = model._meta, admin.site._registry[model]
        change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
        for page in (reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"), change):
            response = client.get(page)
            assert response.status_code == 200, (who, page)
            content = response.content.decode()
            edited = [match.group(0) for match in _EDITED.finditer(content)]
            if page == change and model in (Intake, Provider) and \
                    model_admin.has_change_permission(response.wsgi_request, obj):
                [field] = edited
                assert PATH_TOKEN in field and QUERY_TOKEN in field  # editable, so whole
                content = content.replace(field, "")
            else:
                assert edited == [], (who, page)
            assert PATH_TOKEN not in content and QUERY_TOKEN not in content, (
                who, page, re.findall(r".{0,200}(?:T0ken|qs3cret).{0,80}", content))


def test_a_viewer_sees_the_intakes_callback_url_redacted(client, cast, world):
    client.force_login(cast.auditor_a)
    intake = world[Intake]
    page = client.get(reverse("admin:intakes_intake_change", args=[intake.pk])).content.decode()
    assert "/hook/REDACTED?token=REDACTED" in page
    assert not _EDITED.search(page)


def test_every_role_that_views_a_delivery_sees_its_attempts(client, cast, world):
    delivery = world[CallbackDelivery]
    for who in ("auditor_a", "member_a", "admin_a"):
        client.force_login(getattr(cast, who))
        page = client.get(reverse("admin:intakes_callbackdelivery_change", args=[delivery.pk]))
        assert 'id="attempt_rows-group"' in page.content.decode(), who
        assert page.context["inline_admin_formsets"][0].formset.queryset.count() == 1, who


# Recorded when url_redact still showed a URL's path: the audit log is append-only, so what it
# shows must be redacted when it is read.
OLD_EXTRA = {"callback_url": f"https://hooks.slack.com/services/T0/B0/{PATH_TOKEN}",
             "reason": f"410 Gone from https://hooks.slack.com/services/T0/B0/{PATH_TOKEN}",
             "nested": [{"url": f"https://x.example/hook/{PATH_TOKEN}?token={QUERY_TOKEN}"}]}


def test_an_audit_row_recorded_before_shows_its_urls_redacted(client, cast, world):
    from auxot.services import audit_record

    item = world[WorkItem]
    event = audit_record(event="intake.created", org=cast.org_a, obj=item, extra=OLD_EXTRA)
    client.force_login(cast.auditor_a)
    pages = [reverse("admin:auxot_auditevent_change", args=[event.pk]),
             reverse("admin:auxot_auditevent_export"),
             reverse("admin:workflows_workitem_change", args=[item.pk])]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        content = b"".join(response.streaming_content) if response.streaming else \
            response.content
        text = content.decode()
        assert "410 Gone from https://hooks.slack.com/services/REDACTED" in text.replace(
            "&quot;", '"'), page
        assert PATH_TOKEN not in text and QUERY_TOKEN not in text, page


@pytest.mark.parametrize("who", ["auditor_a", "member_a", "admin_a"])
def test_a_steps_url_shows_redacted_to_whoever_may_not_change_the_workflow(client, cast, who):
    """An http step's static URL may be a chat webhook (its path the credential): the
    workflow page shows a step's config with every URL redacted to members, auditors and
    viewers; the admin, who edits it, gets it whole in the form."""
    url = f"https://hooks.example.com/services/T0AB/{PATH_TOKEN}?token={QUERY_TOKEN}"
    workflow = make_workflow(cast.org_a, [("http", {"method": "POST", "url": url})],
                             name="Chat")
    client.force_login(getattr(cast, who))
    response = client.get(reverse("admin:workflows_workflow_change", args=[workflow.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    edited = re.findall(r'<textarea[^>]*name="steps-0-config"[^>]*>[^<]*</textarea>'
                        r'|<input type="hidden" name="initial-steps-0-config"[^>]*>', content)
    if who == "admin_a":
        assert len(edited) == 2  # the field and Django's copy of its initial value
        for field in edited:
            assert PATH_TOKEN in field and QUERY_TOKEN in field
            content = content.replace(field, "")
    else:
        assert edited == []
        assert "https://hooks.example.com/services/REDACTED/REDACTED?token=REDACTED" in content
    assert PATH_TOKEN not in content and QUERY_TOKEN not in content, re.findall(
        r".{0,200}(?:T0ken|qs3cret).{0,80}", content)


def test_a_viewer_sees_a_providers_base_url_redacted(client, cast, world):
    client.force_login(cast.member_a)
    provider = world[Provider]
    for page in (reverse("admin:workflows_provider_change", args=[provider.pk]),
                 reverse("admin:workflows_provider_changelist")):
        content = client.get(page).content.decode()
        assert "https://llm.example.com/REDACTED/REDACTED?key=REDACTED" in content, page
        assert not _EDITED.search(content)


@pytest.mark.parametrize("base_url", ["https://llm.example.com/v1?key=abc123",
                                      "https://llm.example.com/v1?api-version=1",
                                      "https://llm.example.com/v1#frag",
                                      "https://user:s3cr3tPw@llm.example.com/v1"])
def test_a_base_url_with_a_query_fragment_or_userinfo_is_refused_when_saved(cast, base_url):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        Provider(org=cast.org_a, name="p", model="m", base_url=base_url).full_clean()
    assert "base_url" in refused.value.message_dict
    assert "abc123" not in str(refused.value) and "s3cr3tPw" not in str(refused.value)
