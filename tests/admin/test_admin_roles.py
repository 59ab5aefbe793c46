"""Admin tenancy and roles, enforced on the server (not just hidden buttons)."""

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_issue, apikey_revoke
from auxot.models import AuditEvent
from intakes.models import Intake
from intakes.services import intake_create
from tests.conftest import GREETING, make_workflow, trigger
from workflows.models import Workflow, WorkItem
from workflows.services import work_item_create

INTAKES = "/admin/intakes/intake/"
KEYS = "/admin/apikeys/apikey/"
WORK = "/admin/workflows/workitem/"
AUDIT = "/admin/auxot/auditevent/"
WORKFLOWS = "/admin/workflows/workflow/"


@pytest.fixture
def item_a(workflow_a, intake_a):
    with transaction.atomic():
        return work_item_create(workflow=workflow_a, input={"n": 1}, intake=intake_a)


@pytest.fixture
def org_b_stuff(cast):
    workflow = make_workflow(cast.org_b, [("transform", {"expression": GREETING})], name="B")
    intake = intake_create(org=cast.org_b, workflow=workflow, name="Intake B",
                           created_by=cast.outsider_b)
    with transaction.atomic():
        item = work_item_create(workflow=workflow, input={}, intake=intake)
    return workflow, intake, item


def _login(client, user):
    client.force_login(user)
    return client


# --- tenancy ---------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["admin_a", "member_a", "auditor_a"])
def test_other_orgs_objects_are_404_by_url(client, cast, who, org_b_stuff, intake_a):
    workflow_b, intake_b, item_b = org_b_stuff
    _login(client, getattr(cast, who))
    for url in (f"{INTAKES}{intake_b.pk}/change/", f"{WORK}{item_b.pk}/change/",
                f"{WORKFLOWS}{workflow_b.pk}/change/", f"{INTAKES}{intake_b.pk}/history/"):
        assert client.get(url).status_code == 404, url
    listing = client.get(INTAKES).content.decode()
    assert "Intake B" not in listing
    assert client.get(f"{INTAKES}{intake_a.pk}/change/").status_code == 200


def test_org_b_admin_cannot_act_on_org_a(client, cast, intake_a, item_a):
    _login(client, cast.outsider_b)
    assert client.get(f"{INTAKES}{intake_a.pk}/change/").status_code == 404
    assert client.post(f"{INTAKES}{intake_a.pk}/active/off/").status_code == 404
    client.post(INTAKES, {"action": "deactivate_selected", "confirmed": "yes",
                          "_selected_action": [str(intake_a.pk)]})
    intake_a.refresh_from_db()
    assert intake_a.active
    assert client.post(f"{WORK}{item_a.pk}/decide/", {"decision": "approve"}).status_code == 404


def test_fk_choices_are_scoped(client, cast, workflow_a, org_b_stuff):
    _login(client, cast.admin_a)
    page = client.get(f"{INTAKES}add/")
    choices = page.context["adminform"].form.fields["workflow"].queryset
    assert list(choices) == [workflow_a]
    # A forged POST naming org B's workflow is refused by the form.
    response = client.post(f"{INTAKES}add/", {"workflow": org_b_stuff[0].pk, "name": "sneaky"})
    assert response.status_code == 200
    assert not Intake.objects.filter(name="sneaky").exists()


def test_superuser_sees_every_org(admin_client, intake_a, org_b_stuff):
    listing = admin_client.get(INTAKES).content.decode()
    assert "Intake A" in listing and "Intake B" in listing


# --- roles -------------------------------------------------------------------------------

def test_admin_creates_an_intake_audited_and_prefilled_from_the_workflow(client, cast,
                                                                         workflow_a):
    _login(client, cast.admin_a)
    form = client.get(f"{INTAKES}add/?workflow={workflow_a.pk}").context["adminform"].form
    assert str(form.initial["workflow"]) == str(workflow_a.pk)
    response = client.post(f"{INTAKES}add/", {"workflow": workflow_a.pk, "name": "Orders",
                                              "team": cast.team_a.pk, "callback_url": ""})
    assert response.status_code == 302  # to the signing secret page (shown once)
    intake = Intake.objects.get(name="Orders")
    html = client.get(response["Location"]).content.decode()  # and the way on to the
    assert 'class="signing-secret"' in html  # intake's id and snippets
    assert f'href="{INTAKES}{intake.pk}/change/" id="open-intake"' in html
    assert f"<code>{intake.pk}</code>" in html
    assert (intake.org, intake.team, intake.created_by) == (cast.org_a, cast.team_a,
                                                            cast.admin_a)
    assert AuditEvent.objects.get(event="intake.created", object_id=str(intake.pk)
                                  ).ip == "127.0.0.1"


def test_team_on_a_free_plan_is_a_clear_form_error(client, cast, workflow_a):
    cast.org_a.plan = "free"
    cast.org_a.save()
    _login(client, cast.admin_a)
    response = client.post(f"{INTAKES}add/", {"workflow": workflow_a.pk, "name": "T",
                                              "team": cast.team_a.pk, "callback_url": ""})
    assert "available on the Business and Enterprise plans" in response.content.decode()
    assert not Intake.objects.filter(name="T").exists()


@pytest.mark.parametrize("who", ["member_a", "auditor_a"])
def test_members_and_auditors_cannot_manage_intakes(client, cast, who, workflow_a, intake_a):
    _login(client, getattr(cast, who))
    assert client.get(f"{INTAKES}add/").status_code == 403
    assert client.post(f"{INTAKES}add/", {"workflow": workflow_a.pk, "name": "x"}
                       ).status_code == 403
    assert client.post(f"{INTAKES}{intake_a.pk}/active/off/").status_code == 403
    client.post(INTAKES, {"action": "deactivate_selected", "confirmed": "yes",
                          "_selected_action": [str(intake_a.pk)]})
    response = client.post(f"{INTAKES}{intake_a.pk}/change/", {"name": "renamed",
                                                                "callback_url": ""})
    assert response.status_code == 403
    intake_a.refresh_from_db()
    assert intake_a.active and intake_a.name == "Intake A"
    assert client.get(f"{INTAKES}{intake_a.pk}/change/").status_code == 200  # may view


def test_auditor_sees_history_and_audit_but_no_controls(client, cast, item_a, intake_a):
    _login(client, cast.auditor_a)
    for url in (WORK, f"{WORK}{item_a.pk}/change/", AUDIT, INTAKES, KEYS,
                f"{INTAKES}{intake_a.pk}/change/"):
        page = client.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert 'name="action"' not in html, url
        assert "addlink" not in html and "deletelink" not in html, url
        assert 'name="_save"' not in html, url
    # Forged POSTs: an action, a decision, a run, a key.
    client.post(WORK, {"action": "cancel_selected", "_selected_action": [str(item_a.pk)]})
    item_a.refresh_from_db()
    assert item_a.status == WorkItem.Status.PENDING
    assert client.post(f"{WORKFLOWS}{item_a.workflow_id}/run/", {"input": "{}"}
                       ).status_code == 403
    assert client.post(f"{KEYS}add/", {"org": cast.org_a.pk, "label": "x", "kind": "user"}
                       ).status_code == 403
    assert not ApiKey.objects.filter(label="x").exists()


def test_member_cannot_see_the_audit_log_but_views_work(client, cast, item_a):
    _login(client, cast.member_a)
    assert client.get(AUDIT).status_code == 403
    assert client.get(f"{WORK}{item_a.pk}/change/").status_code == 200


def test_member_cancels_work(client, cast, item_a):
    _login(client, cast.member_a)
    client.post(WORK, {"action": "cancel_selected", "_selected_action": [str(item_a.pk)]})
    item_a.refresh_from_db()
    assert item_a.status == WorkItem.Status.FAILED


# --- intakes: list, detail, deactivate ------------------------------------------------

def test_intake_list_counts_without_n_plus_one(client, cast, workflow_a, intake_a,
                                               django_assert_max_num_queries):
    for n in range(3):
        intake = intake_create(org=cast.org_a, workflow=workflow_a, name=f"I{n}")
        with transaction.atomic():
            work_item_create(workflow=workflow_a, input={}, intake=intake)
    with transaction.atomic():
        failed = work_item_create(workflow=workflow_a, input={}, intake=intake_a)
    WorkItem.objects.filter(pk=failed.pk).update(status="failed")
    _login(client, cast.admin_a)
    with django_assert_max_num_queries(15):
        page = client.get(INTAKES)
    rows = page.context["cl"].result_list
    by_name = {i.name: (i.accepted_count, i.failed_count) for i in rows}
    assert by_name["Intake A"] == (1, 1) and by_name["I0"] == (1, 0)
    assert client.get(INTAKES, {"q": str(intake_a.pk)}).context["cl"].result_count == 1


def test_intake_list_reads_each_intakes_recent_items_not_the_whole_history(
        client, cast, workflow_a, intake_a):
    """The counts were a join and GROUP BY over every intake's whole history, before the
    page's limit (0.6 s at 400,000 items): now per intake, on its (intake, created_at)
    index. Older items count for "last triggered", not for the last 24 h."""
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    with transaction.atomic():
        old = work_item_create(workflow=workflow_a, input={}, intake=intake_a)
    WorkItem.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3),
                                              status="failed")
    intake_create(org=cast.org_a, workflow=workflow_a, name="Idle")
    _login(client, cast.admin_a)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(INTAKES)
    rows = {i.name: i for i in page.context["cl"].result_list}
    assert (rows["Intake A"].accepted_count, rows["Intake A"].failed_count) == (0, 0)
    assert rows["Intake A"].last_triggered_at == WorkItem.objects.get(pk=old.pk).created_at
    assert (rows["Idle"].accepted_count, rows["Idle"].last_triggered_at) == (0, None)
    listing = [q["sql"] for q in queries.captured_queries
               if "last_triggered_at" in q["sql"] and "LIMIT" in q["sql"]]
    assert listing and all("GROUP BY" not in sql for sql in listing)


def test_intake_list_queries_do_not_grow_with_its_teams(client, cast, workflow_a):
    """A team is shown as "Org / Team": each row's team read its organization again."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from auxot.models import Team

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(INTAKES).status_code == 200
        return len(captured.captured_queries)

    _login(client, cast.auditor_a)
    intake_create(org=cast.org_a, workflow=workflow_a, name="i0", team=cast.team_a)
    before = queries()
    for n in range(1, 11):
        team = Team.objects.create(org=cast.org_a, name=f"t{n}")
        intake_create(org=cast.org_a, workflow=workflow_a, name=f"i{n}", team=team)
    assert queries() == before


def test_intake_detail_has_snippets_with_the_real_url_and_no_secret(client, cast, intake_a,
                                                                    settings, member_token):
    settings.AUXOT_PUBLIC_BASE_URL = "https://auxot.example.com"
    _login(client, cast.admin_a)
    html = client.get(f"{INTAKES}{intake_a.pk}/change/").content.decode()
    url = f"https://auxot.example.com/v1/intake/{intake_a.pk}"
    for slug in ("curl-trigger", "curl-poll", "shell-loop", "github-actions", "python"):
        assert f'id="snippet-{slug}"' in html
    assert html.count(url) >= 5
    assert "$AUXOT_API_KEY" in html and "user.</code>" in html and "team.</code>" in html
    assert "RANDOM" in html  # the loop sleeps with jitter
    assert member_token not in html
    assert f'<code id="intake-id">{intake_a.pk}</code>' in html


def test_deactivate_single_with_confirmation_then_404_then_reactivate(
        client, api, cast, intake_a, member_token):
    _login(client, cast.admin_a)
    confirm = client.get(f"{INTAKES}{intake_a.pk}/active/off/")
    assert "answer <strong>404</strong>" in confirm.content.decode()
    intake_a.refresh_from_db()
    assert intake_a.active  # a GET changes nothing
    client.post(f"{INTAKES}{intake_a.pk}/active/off/")
    assert trigger(api, intake_a.pk, member_token).status_code == 404
    client.post(f"{INTAKES}{intake_a.pk}/active/on/")
    assert trigger(api, intake_a.pk, member_token).status_code == 202
    events = list(AuditEvent.objects.filter(object_id=str(intake_a.pk)).values_list(
        "event", flat=True).order_by("created_at"))
    assert events[-2:] == ["intake.deactivated", "intake.reactivated"] or (
        "intake.deactivated" in events and "intake.reactivated" in events)


def test_bulk_deactivate_asks_first(client, cast, workflow_a, intake_a):
    other = intake_create(org=cast.org_a, workflow=workflow_a, name="Other")
    _login(client, cast.admin_a)
    selected = [str(intake_a.pk), str(other.pk)]
    page = client.post(INTAKES, {"action": "deactivate_selected", "_selected_action": selected})
    assert "Yes, deactivate" in page.content.decode()
    assert Intake.objects.filter(active=True).count() == 2
    client.post(INTAKES, {"action": "deactivate_selected", "confirmed": "yes",
                          "_selected_action": selected})
    assert Intake.objects.filter(active=True).count() == 0


def test_edit_is_audited_with_field_names(client, cast, intake_a):
    _login(client, cast.admin_a)
    form = client.get(f"{INTAKES}{intake_a.pk}/change/").context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items() if k in form.fields}
    data.update(name="Renamed", team=cast.team_a.pk)
    response = client.post(f"{INTAKES}{intake_a.pk}/change/", data)
    assert response.status_code == 302, response.content[:3000]
    event = AuditEvent.objects.get(event="intake.changed", object_id=str(intake_a.pk))
    assert sorted(event.extra["fields"]) == ["name", "team"]


def test_edit_is_audited_old_to_new_with_the_url_redacted(client, cast, intake_a):
    _login(client, cast.admin_a)
    form = client.get(f"{INTAKES}{intake_a.pk}/change/").context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items() if k in form.fields}
    data.update(name="Renamed", team=cast.team_a.pk, rate_limit_per_window="7",
                callback_url="https://hooks.example.com/T0/B1/XsecretpathX?sig=tok3n")
    response = client.post(f"{INTAKES}{intake_a.pk}/change/", data)
    assert response.status_code == 302, response.content[:3000]
    event = AuditEvent.objects.get(event="intake.changed", object_id=str(intake_a.pk))
    changes = event.extra["changes"]
    assert changes["name"] == ["Intake A", "Renamed"]
    assert changes["team"] == [None, str(cast.team_a)]
    assert changes["rate_limit_per_window"] == [None, 7]
    old, new = changes["callback_url"]
    assert old == "" and new.startswith("https://hooks.example.com/")
    assert "XsecretpathX" not in repr(event.extra) and "tok3n" not in repr(event.extra)


def test_workflow_page_lists_intakes_and_links_add(client, cast, workflow_a, intake_a):
    _login(client, cast.admin_a)
    html = client.get(f"{WORKFLOWS}{workflow_a.pk}/change/").content.decode()
    assert "Intake A" in html
    assert f"{INTAKES}add/?workflow={workflow_a.pk}" in html


# --- API keys ---------------------------------------------------------------------------

def test_member_personal_key_shown_exactly_once(client, cast):
    _login(client, cast.member_a)
    response = client.post(f"{KEYS}add/", {"org": cast.org_a.pk, "label": "laptop",
                                           "kind": "user"}, follow=True)
    html = response.content.decode()
    [token] = re.findall(r'<code id="new-token"[^>]*>([^<]+)</code>', html)
    assert token.startswith("user.")
    key = ApiKey.objects.get(label="laptop")
    assert key.user == cast.member_a and token.endswith(key.last_four)
    again = client.get(f"{KEYS}{key.pk}/change/").content.decode()
    assert token not in again and key.last_four in again
    assert AuditEvent.objects.get(event="apikey.issued").ip == "127.0.0.1"
    assert token not in json.dumps(list(AuditEvent.objects.values("extra")))


def test_a_new_tokens_stash_in_the_session_is_encrypted_and_short_lived(client, cast,
                                                                        time_machine):
    """The token crosses the redirect in the session: Django signs session data, it does not
    encrypt it, and a redirect never followed would keep it in the sessions table."""
    import base64
    import zlib

    from django.contrib.sessions.models import Session

    _login(client, cast.member_a)
    response = client.post(f"{KEYS}add/", {"org": cast.org_a.pk, "label": "laptop",
                                           "kind": "user"})
    assert response.status_code == 302
    key = ApiKey.objects.get(label="laptop")
    [row] = Session.objects.all()
    raw = row.session_data
    payload = raw.split(":")[0]
    decoded = (zlib.decompress(base64.urlsafe_b64decode(payload[1:] + "==")).decode()
               if payload.startswith(".") else base64.urlsafe_b64decode(payload + "==").decode())
    assert "auxot_new_api_token" in decoded  # the stash is there, and it is read back below
    assert "user." not in decoded and key.last_four not in json.dumps(row.get_decoded())
    html = client.get(response["Location"]).content.decode()
    [token] = re.findall(r'<code id="new-token"[^>]*>([^<]+)</code>', html)
    assert token.endswith(key.last_four)
    # A redirect followed too late shows no token, and says what to do.
    client.post(f"{KEYS}add/", {"org": cast.org_a.pk, "label": "late", "kind": "user"})
    late = ApiKey.objects.get(label="late")
    from datetime import timedelta

    from django.utils import timezone

    time_machine.move_to(timezone.now() + timedelta(seconds=301))
    html = client.get(f"{KEYS}{late.pk}/change/").content.decode()
    assert 'id="new-token"' not in html and "revoke the key and issue another" in html


def test_member_cannot_issue_team_keys_and_sees_only_own_keys(client, cast, member_token):
    apikey_issue(org=cast.org_a, label="admin's", user=cast.admin_a)
    _login(client, cast.member_a)
    # Not offered: the kind has one choice, the team is disabled and says who issues them.
    form = client.get(f"{KEYS}add/").context["adminform"].form
    assert [value for value, _ in form.fields["kind"].choices] == ["user"]
    assert form.fields["team"].disabled and "issued by admins" in form.fields["team"].help_text
    # Forged anyway: refused, nothing issued.
    html = client.post(f"{KEYS}add/", {"org": cast.org_a.pk, "label": "t", "kind": "team",
                                       "team": cast.team_a.pk}).content.decode()
    assert "Select a valid choice. team is not one of the available choices." in html
    assert not ApiKey.objects.filter(label="t").exists()
    listing = client.get(KEYS).content.decode()
    assert "member key" in listing and "admin&#x27;s" not in listing


def test_an_admin_is_offered_both_kinds(client, cast):
    _login(client, cast.admin_a)
    form = client.get(f"{KEYS}add/").context["adminform"].form
    assert [value for value, _ in form.fields["kind"].choices] == ["user", "team"]
    assert not form.fields["team"].disabled


def test_team_keys_need_business(client, cast):
    cast.org_a.plan = "pro"
    cast.org_a.save()
    _login(client, cast.admin_a)
    html = client.post(f"{KEYS}add/", {"org": cast.org_a.pk, "label": "t", "kind": "team",
                                       "team": cast.team_a.pk}).content.decode()
    assert "Business and Enterprise plans" in html
    assert not ApiKey.objects.filter(label="t").exists()


def test_admin_revokes_a_members_key_and_it_answers_401(client, api, cast, intake_a,
                                                       member_token):
    key = ApiKey.objects.get(label="member key")
    _login(client, cast.admin_a)
    client.post(KEYS, {"action": "revoke_selected", "_selected_action": [str(key.pk)]})
    assert trigger(api, intake_a.pk, member_token).status_code == 401
    assert AuditEvent.objects.filter(event="apikey.revoked", object_id=str(key.pk)).exists()


def test_member_cannot_revoke_someone_elses_key(client, cast):
    other = apikey_issue(org=cast.org_a, label="admin's", user=cast.admin_a).key
    _login(client, cast.member_a)
    client.post(KEYS, {"action": "revoke_selected", "_selected_action": [str(other.pk)]})
    other.refresh_from_db()
    assert other.revoked_at is None


def _key_page(client, key) -> str:
    response = client.get(f"{KEYS}{key.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_keys_page_offers_revoke_and_neither_delete_nor_save(client, admin_client, cast):
    """Every field of a key's page is read-only, and a deleted key left no audit row: the
    page offers Revoke (to whoever may revoke it), no Delete and no Save, superusers
    included."""
    key = apikey_issue(org=cast.org_a, label="ci", user=cast.member_a).key
    revoke = f'href="{KEYS}{key.pk}/revoke/"'
    for viewer in (admin_client, _login(client, cast.admin_a), _login(client, cast.member_a)):
        html = _key_page(viewer, key)
        assert revoke in html and ">Revoke</a>" in html
        assert f"{KEYS}{key.pk}/delete/" not in html and 'name="_save"' not in html
        assert 'name="_continue"' not in html and 'name="_addanother"' not in html
    html = _key_page(_login(client, cast.auditor_a), key)
    assert revoke not in html and "delete/" not in html and 'name="_save"' not in html
    apikey_revoke(key=key)
    assert revoke not in _key_page(admin_client, key)  # nothing left to revoke


@pytest.mark.parametrize("who", ["superuser", "admin_a"])
def test_no_one_deletes_a_key_in_the_admin(client, admin_client, cast, who):
    key = apikey_issue(org=cast.org_a, label="ci", user=cast.admin_a).key
    actor = admin_client if who == "superuser" else _login(client, cast.admin_a)
    assert actor.get(f"{KEYS}{key.pk}/delete/").status_code == 403
    assert actor.post(f"{KEYS}{key.pk}/delete/", {"post": "yes"}).status_code == 403
    listing = actor.get(KEYS)
    assert "delete_selected" not in dict(listing.context["action_form"].fields["action"].choices)
    actor.post(KEYS, {"action": "delete_selected", "post": "yes",
                      "_selected_action": [str(key.pk)]})
    assert ApiKey.objects.filter(pk=key.pk).exists()
    key.refresh_from_db()
    assert key.revoked_at is None


def test_revoke_on_a_keys_page_asks_then_revokes_audited(client, api, cast, intake_a,
                                                         member_token):
    from django.test import Client

    key = ApiKey.objects.get(label="member key")
    url = f"{KEYS}{key.pk}/revoke/"
    guarded = Client(enforce_csrf_checks=True)
    guarded.force_login(cast.admin_a)
    confirm = guarded.get(url)
    html = confirm.content.decode()
    assert confirm.status_code == 200 and 'name="csrfmiddlewaretoken"' in html
    assert 'method="post"' in html and "final" in html and key.display in html
    assert guarded.post(url).status_code == 403  # no CSRF token: refused
    key.refresh_from_db()
    assert key.revoked_at is None and not AuditEvent.objects.filter(
        event="apikey.revoked").exists()
    token = guarded.cookies["csrftoken"].value
    response = guarded.post(url, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == f"{KEYS}{key.pk}/change/"
    key.refresh_from_db()
    assert key.revoked_at is not None and key.revoked_by == cast.admin_a
    event = AuditEvent.objects.get(event="apikey.revoked", object_id=str(key.pk))
    assert (event.actor_user, event.ip) == (cast.admin_a, "127.0.0.1")
    assert trigger(api, intake_a.pk, member_token).status_code == 401
    # Again: nothing to do, nothing audited twice.
    guarded.post(url, {"csrfmiddlewaretoken": token})
    assert AuditEvent.objects.filter(event="apikey.revoked").count() == 1


def test_a_members_own_key_is_revoked_from_its_page(client, cast, member_token):
    key = ApiKey.objects.get(label="member key")
    _login(client, cast.member_a)
    assert client.post(f"{KEYS}{key.pk}/revoke/").status_code == 302
    key.refresh_from_db()
    assert key.revoked_by == cast.member_a
    assert AuditEvent.objects.filter(event="apikey.revoked", object_id=str(key.pk)).exists()


@pytest.mark.parametrize(("who", "status"), [("auditor_a", 403), ("member_a", 404),
                                             ("outsider_b", 404)])
def test_a_forged_revoke_is_refused_and_changes_nothing(client, cast, who, status):
    """An auditor (403), a member (another person's key, which they cannot even see: 404)
    and another organization's admin (404)."""
    key = apikey_issue(org=cast.org_a, label="admin's", user=cast.admin_a).key
    _login(client, getattr(cast, who))
    assert client.get(f"{KEYS}{key.pk}/revoke/").status_code == status
    assert client.post(f"{KEYS}{key.pk}/revoke/").status_code == status
    key.refresh_from_db()
    assert key.revoked_at is None
    assert not AuditEvent.objects.filter(event="apikey.revoked").exists()


def test_key_expiry_in_the_past_is_refused(client, cast):
    _login(client, cast.member_a)
    past = timezone.now() - timedelta(days=1)
    html = client.post(f"{KEYS}add/", {
        "org": cast.org_a.pk, "label": "old", "kind": "user",
        "expires_at_0": past.strftime("%Y-%m-%d"), "expires_at_1": "00:00:00"}).content.decode()
    assert "must be in the future" in html


# --- work history, New task, audit log -------------------------------------------------

def test_new_task_runs_the_workflow_and_lands_on_the_item(client, cast, workflow_a):
    _login(client, cast.member_a)
    bad = client.post(f"{WORKFLOWS}{workflow_a.pk}/run/", {"input": "{nope"})
    assert "Not valid JSON" in bad.content.decode()
    assert not WorkItem.objects.exists()
    response = client.post(f"{WORKFLOWS}{workflow_a.pk}/run/", {"input": '{"customer": "Ada"}'})
    item = WorkItem.objects.get()
    assert response["Location"] == f"{WORK}{item.pk}/change/"
    assert item.input == {"customer": "Ada"} and item.intake is None
    event = AuditEvent.objects.get(event="work_item.created")
    assert (event.object_id, event.actor_user) == (str(item.pk), cast.member_a)


def test_new_task_reports_schema_violations(client, cast, workflow_a):
    Workflow.objects.filter(pk=workflow_a.pk).update(input_schema={
        "type": "object", "required": ["customer"]})
    _login(client, cast.admin_a)
    html = client.post(f"{WORKFLOWS}{workflow_a.pk}/run/", {"input": "{}"}).content.decode()
    assert "does not match the input schema" in html
    assert not WorkItem.objects.exists()


def test_work_item_page_traces_it(client, cast, item_a):
    _login(client, cast.auditor_a)
    html = client.get(f"{WORK}{item_a.pk}/change/").content.decode().lower()
    for part in ("diagnosis", "input", "output or error", "step timeline", "approvals",
                 "audit events", "callback delivery"):
        assert part in html, part


def test_work_item_page_shows_what_it_waits_on_as_json(client, cast, item_a):
    """The diagnosis row showed the poll's waiting_on as Python's repr ({'kind': ...});
    it is the poll's JSON, as "Why is my poll stuck?" shows it."""
    _login(client, cast.admin_a)
    html = client.get(f"{WORK}{item_a.pk}/change/").content.decode()
    assert re.search(r"<strong>waiting on (\w+)</strong> <code>\{&quot;kind&quot;: "
                     r"&quot;\1&quot;, &quot;since&quot;: &quot;", html), html
    assert "{&#x27;kind&#x27;" not in html and "{'kind'" not in html


def test_audit_log_is_append_only_in_the_admin_and_exports_csv(client, cast, intake_a):
    event = AuditEvent.objects.get(event="intake.created")
    _login(client, cast.admin_a)
    assert client.get(f"{AUDIT}add/").status_code == 403
    assert client.post(f"{AUDIT}{event.pk}/change/", {"event": "x"}).status_code == 403
    assert client.post(f"{AUDIT}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk, event="intake.created").exists()
    response = client.get(f"{AUDIT}export.csv", {"event": "intake.created"})
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][0] == "created_at" and len(rows) == 2 and rows[1][1] == "intake.created"


# --- "Why is my poll stuck?" -------------------------------------------------------------

def test_poll_stuck_takes_a_bare_work_id_and_explains_an_error_body(client, cast, item_a):
    """What a caller has at hand: the work id alone is looked up; a problem+json body (the
    poll was refused: 401, 404) is not "no work_id" but says what refused it."""
    url = "/admin/poll-stuck/"
    _login(client, cast.member_a)
    for pasted in (str(item_a.pk), f'"{item_a.pk}"', f"  {item_a.pk}\n"):
        html = client.post(url, {"poll": pasted}).content.decode()
        assert 'id="poll-result"' in html and str(item_a.pk) in html, pasted
    problem = {"type": "/v1/problems/not_found", "title": "Not found", "status": 404,
               "detail": "No such intake or work item for this key.", "code": "not_found"}
    html = client.post(url, {"poll": json.dumps(problem)}).content.decode()
    assert ("That is an error answer (HTTP 404 not_found), not a work item: the request "
            "itself was refused, before any work item was read. No such intake or work item "
            "for this key. See /v1/problems/not_found for what to check.") in html, html
    html = client.post(url, {"poll": json.dumps({"status": "running"})}).content.decode()
    assert "That JSON has no work_id: paste the whole body the poll returned" in html


def test_poll_stuck_explains_own_items_only(client, cast, item_a, org_b_stuff):
    url = "/admin/poll-stuck/"
    _login(client, cast.member_a)
    assert "Why is my poll stuck?" in client.get("/admin/").content.decode()
    poll = {"work_id": str(item_a.pk), "status": "pending"}
    html = client.post(url, {"poll": json.dumps(poll)}).content.decode()
    assert 'id="poll-result"' in html and "Diagnosis:" in html
    assert "no worker heartbeat" in html  # no qcluster in this test
    # What it waits on, as the poll says it: JSON, not a Python repr.
    assert "<code>{&quot;kind&quot;: &quot;worker&quot;" in html, html
    assert f"{WORK}{item_a.pk}/change/" in html
    other = client.post(url, {"poll": json.dumps({"work_id": str(org_b_stuff[2].pk)})})
    missing = client.post(url, {"poll": json.dumps(
        {"work_id": "00000000-0000-4000-8000-000000000000"})})
    assert 'id="poll-not-found"' in other.content.decode()
    strip = lambda r: re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"|[0-9a-f-]{36}', "",  # noqa: E731
                             r.content.decode())
    assert strip(other) == strip(missing)
    assert "Not valid JSON" in client.post(url, {"poll": "{"}).content.decode()
    assert "no work_id" in client.post(url, {"poll": "{}"}).content.decode()
