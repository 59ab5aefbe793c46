"""Every admin action and custom admin URL checks the role in EACH object's own organization.

The tests enumerate the admin registry: every action offered (Django's `delete_selected`
only where a non-superuser is offered it) and every URL beyond Django's standard ones must
have a row in CASES, or `test_every_admin_action_and_url_has_a_case` fails. Each row says who
may do it and how to build a target object in an organization, forge the request and see
its effect. The user under test is an ADMIN of org B who is an auditor, a member, or nothing
in org A: on org A's object the attempt is refused (403/404, or absent from a list), changes
nothing and shows no secret exactly when the role in A does not allow it; on org B's object
the same user succeeds, so the refusals prove the check, not a blanket "no".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client, RequestFactory
from django.urls import URLPattern, get_resolver
from django_q.models import Failure, OrmQ, Success

from apikeys.models import ApiKey
from apikeys.services import apikey_issue
from auxot.admin_base import ACTORS, ADMIN, AUDITOR, EVERYONE, MANAGERS, MEMBER
from auxot.models import AuditEvent, Membership, Organization
from auxot.services import audit_record
from intakes.callbacks import callback_delivery_create
from intakes.models import CallbackDelivery, CallbackEndpoint, Intake
from intakes.secrets import secret_decrypt
from intakes.services import intake_create
from tests.conftest import make_workflow
from workflows.batch import work_item_process
from workflows.models import Approval, Workflow, WorkItem
from workflows.services import work_item_create

SUPERUSERS_ONLY = frozenset()
ROLES_IN_A = [AUDITOR, MEMBER, None]
SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]{8,}|\b(?:user|team)\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]+")


# --- the world: the user under test and what each case builds --------------------------

@dataclass
class World:
    cast: object
    receiver: object
    user: object  # admin of org B; auditor / member / nothing in org A
    tokens: list = field(default_factory=list)

    def owner(self, org: Organization):
        return self.cast.admin_a if org == self.cast.org_a else self.cast.outsider_b

    def intake(self, org: Organization, name: str = "Target", steps=None):
        workflow = make_workflow(org, steps or [("transform", {"expression": "{echo: input}"})],
                                 name=f"{name} flow {org.slug}")
        return intake_create(org=org, workflow=workflow, name=f"{name} {org.slug}",
                             created_by=self.owner(org),
                             callback_url=self.receiver.url_for("/hook"))

    def item(self, org: Organization, steps=None):
        intake = self.intake(org, steps=steps)
        with transaction.atomic():
            return work_item_create(workflow=intake.workflow, input={"n": 1}, intake=intake)


@pytest.fixture(params=ROLES_IN_A, ids=lambda role: f"{role or 'no-role'}-in-A")
def world(request, cast, receiver):
    user = get_user_model().objects.create_user("multi", "multi@example.com", "pw",
                                                is_staff=True)
    Membership.objects.create(user=user, org=cast.org_b, role=ADMIN)
    if request.param:
        Membership.objects.create(user=user, org=cast.org_a, role=request.param)
    receiver.expect_request("/hook").respond_with_data("ok")
    world = World(cast=cast, receiver=receiver, user=user)
    world.role_in_a = request.param
    return world


def _body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8-sig")
    return response.content.decode()


# --- the table ----------------------------------------------------------------------------

@dataclass
class Case:
    roles: frozenset  # who may, in the object's own organization; empty: superusers only
    build: Callable  # (world, org) -> target object
    send: Callable  # (client, target) -> response
    probe: Callable  # (target) -> state before and after
    effect: Callable  # (target, before, after, body) -> True if it took effect / was shown
    refused_statuses: tuple = (403, 404)
    # The audit event its success writes, with the acting user and their address; None for
    # a page that changes nothing (a list, an export, a secret shown once).
    event: str | None = field(kw_only=True)


def action(changelist: str, name: str, **extra) -> Callable:
    def send(client, target):
        return client.post(changelist, {"action": name, "_selected_action": [str(target.pk)],
                                        **extra})
    return send


def changed(target, before, after, body) -> bool:
    return before != after


def _audit_count(event: str) -> Callable:
    return lambda target: AuditEvent.objects.filter(event=event,
                                                    object_id=str(target.pk)).count()


def _build_key(world, org):
    mine = Membership.objects.filter(user=world.user, org=org).exists()
    issued = apikey_issue(org=org, label=f"key {org.slug}",
                          user=world.user if mine else world.owner(org))
    world.tokens.append(issued.token)
    return issued.key


def _build_inactive_intake(world, org):
    intake = world.intake(org)
    Intake.objects.filter(pk=intake.pk).update(active=False)
    return intake


def _build_disabled_intake(world, org):
    intake = world.intake(org)
    Intake.objects.filter(pk=intake.pk).update(callback_disabled_at="2026-01-01T00:00:00Z",
                                               callback_disabled_reason="410 Gone")
    return intake


def _build_delivery(world, org):
    item = world.item(org)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return (CallbackDelivery.objects.filter(work_item=item).first()
            or callback_delivery_create(work_item=item))


def _build_paused_delivery(world, org):
    """A delivery whose endpoint's circuit is open (the breaker row of its own org)."""
    delivery = _build_delivery(world, org)
    CallbackEndpoint.objects.update_or_create(key=delivery.endpoint, defaults={
        "consecutive_failures": 20, "failing_since": "2026-01-01T00:00:00Z",
        "open_until": "2099-01-01T00:00:00Z"})
    return delivery


def _endpoint_open_until(target):
    return CallbackEndpoint.objects.get(key=target.endpoint).open_until


def _build_parked(world, org):
    item = world.item(org, steps=[("approval", {"instructions": "Sign it"}),
                                  ("transform", {"expression": "input"})])
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.waiting_on == WorkItem.Waiting.APPROVAL
    return item


def _build_audit_row(world, org):
    return audit_record(event="test.marker", org=org, actor_label=f"marker-{org.slug}")


def _secret_of(intake) -> str:
    intake.refresh_from_db()
    return secret_decrypt(intake.signing_secret_encrypted)


def _stash(client, intake, verb: str = "created") -> None:
    """This intake's secret stashed in the client's session, as if this user had just added
    the intake (or rotated its secret): the pages that show it check the role all the same."""
    from django.http import HttpRequest

    from intakes.admin_callbacks import NEW_SECRETS

    request, session = HttpRequest(), client.session
    request.session = session
    NEW_SECRETS.put(request, {intake.pk: _secret_of(intake)}, verb=verb)
    session.save()


def _open_stashed_secret(client, intake):
    _stash(client, intake)
    return client.get(f"{INTAKES}{intake.pk}/signing-secret/")


def _open_rotated_secrets(client, intake):
    _stash(client, intake, "rotated")
    return client.get(f"{INTAKES}signing-secrets/")


def _rotate_and_open(client, intake):
    """The rotate action, then the page it redirects to (where the new secret is shown)."""
    response = action(INTAKES, "rotate_signing_secret")(client, intake)
    return client.get(response["Location"]) if response.status_code == 302 else response


def _tests_sent(intake) -> int:
    return sum(1 for request, _ in intake._receiver.log
               if json.loads(request.get_data() or b"{}").get("intake_id") == str(intake.pk))


def _build_intake_watched(world, org):
    intake = world.intake(org)
    intake._receiver = world.receiver
    return intake


def _orm_queue(target) -> int:
    return OrmQ.objects.count()


def _build_task(model):
    def build(world, org):
        return model.objects.create(id=f"t{model.__name__}{org.pk}", name="task", func="math.floor",
                                    args=(1.5,), kwargs={}, started="2026-01-01T00:00:00Z",
                                    stopped="2026-01-01T00:00:01Z",
                                    success=model is Success)
    return build


def _build_failed(world, org):
    from django.utils import timezone

    item = world.item(org)
    WorkItem.objects.filter(pk=item.pk).update(
        status=WorkItem.Status.FAILED, finished_at=timezone.now(), next_run_at=None,
        error={"code": "boom", "message": "down", "step": "transform 1", "step_position": 1})
    item.refresh_from_db()
    return item


def _batches_with(target) -> int:
    from workflows.models import ReplayBatch

    return sum(str(target.pk) in batch.work_ids for batch in ReplayBatch.objects.all())


def _build_batch(world, org):
    from workflows.replay import replay_batch_create

    item = _build_failed(world, org)
    return replay_batch_create(org=org, work_ids=[item.pk], user=world.owner(org),
                               label=f"marker-batch-{org.slug}")


INTAKES = "/admin/intakes/intake/"

CASES: dict[tuple[str, str], Case] = {
    # Changelist actions: ("app.Model", action name).
    ("intakes.Intake", "deactivate_selected"): Case(
        MANAGERS, lambda w, org: w.intake(org),
        action(INTAKES, "deactivate_selected", confirmed="yes"),
        lambda t: Intake.objects.get(pk=t.pk).active, changed, event="intake.deactivated"),
    ("intakes.Intake", "reactivate_selected"): Case(
        MANAGERS, _build_inactive_intake,
        action(INTAKES, "reactivate_selected", confirmed="yes"),
        lambda t: Intake.objects.get(pk=t.pk).active, changed, event="intake.reactivated"),
    ("intakes.Intake", "rotate_signing_secret"): Case(
        MANAGERS, lambda w, org: w.intake(org), _rotate_and_open,
        _secret_of, lambda t, before, after, body: before != after and after in body,
        event="intake.signing_secret_rotated"),
    ("intakes.Intake", "send_test_callback"): Case(
        MANAGERS, _build_intake_watched, action(INTAKES, "send_test_callback"),
        _tests_sent, changed, event="callback.test_sent"),
    ("intakes.Intake", "enable_callbacks"): Case(
        MANAGERS, _build_disabled_intake, action(INTAKES, "enable_callbacks"),
        lambda t: Intake.objects.get(pk=t.pk).callback_disabled_at, changed,
        event="intake.callback_enabled"),
    ("intakes.CallbackDelivery", "redeliver_now"): Case(
        MANAGERS, _build_delivery,
        action("/admin/intakes/callbackdelivery/", "redeliver_now"),
        _audit_count("callback.redelivered"), changed, event="callback.redelivered"),
    ("intakes.CallbackDelivery", "close_endpoint_circuit"): Case(
        MANAGERS, _build_paused_delivery,
        action("/admin/intakes/callbackdelivery/", "close_endpoint_circuit"),
        _endpoint_open_until, changed, event="callback.endpoint_closed"),
    ("apikeys.ApiKey", "revoke_selected"): Case(
        ACTORS, _build_key, action("/admin/apikeys/apikey/", "revoke_selected"),
        lambda t: ApiKey.objects.get(pk=t.pk).revoked_at, changed, event="apikey.revoked"),
    ("workflows.WorkItem", "cancel_selected"): Case(
        ACTORS, lambda w, org: w.item(org), action("/admin/workflows/workitem/",
                                                   "cancel_selected"),
        lambda t: WorkItem.objects.get(pk=t.pk).status, changed, event="work_item.canceled"),
    ("workflows.WorkItem", "replay_selected"): Case(
        ACTORS, _build_failed, action("/admin/workflows/workitem/", "replay_selected",
                                      confirm="yes"),
        _batches_with, changed, event="replay_batch.created"),
    ("django_q.Success", "resubmit_task"): Case(
        SUPERUSERS_ONLY, _build_task(Success), action("/admin/django_q/success/",
                                                      "resubmit_task"),
        _orm_queue, changed, event="success.resubmit_task"),
    ("django_q.Failure", "resubmit_task"): Case(
        SUPERUSERS_ONLY, _build_task(Failure), action("/admin/django_q/failure/",
                                                      "resubmit_task"),
        _orm_queue, changed, event="failure.resubmit_task"),
    # Custom URLs: ("app.Model" or "urls", URL name).
    ("intakes.Intake", "intakes_intake_set_active"): Case(
        MANAGERS, lambda w, org: w.intake(org),
        lambda c, t: c.post(f"{INTAKES}{t.pk}/active/off/"),
        lambda t: Intake.objects.get(pk=t.pk).active, changed, event="intake.deactivated"),
    ("intakes.Intake", "intakes_intake_signing_secret"): Case(
        MANAGERS, lambda w, org: w.intake(org), _open_stashed_secret, _secret_of,
        lambda t, before, after, body: before in body, event=None),
    ("intakes.Intake", "intakes_intake_signing_secrets"): Case(
        MANAGERS, lambda w, org: w.intake(org), _open_rotated_secrets, _secret_of,
        lambda t, before, after, body: before in body, refused_statuses=(200, 403, 404),
        event=None),
    ("apikeys.ApiKey", "apikeys_apikey_revoke"): Case(
        ACTORS, _build_key, lambda c, t: c.post(f"/admin/apikeys/apikey/{t.pk}/revoke/"),
        lambda t: ApiKey.objects.get(pk=t.pk).revoked_at, changed, event="apikey.revoked"),
    ("workflows.Workflow", "workflows_workflow_run"): Case(
        ACTORS, lambda w, org: w.intake(org).workflow,
        lambda c, t: c.post(f"/admin/workflows/workflow/{t.pk}/run/", {"input": "{}"}),
        lambda t: WorkItem.objects.filter(workflow=t).count(), changed, event="work_item.created"),
    ("workflows.WorkItem", "workflows_workitem_decide"): Case(
        ACTORS, _build_parked,
        lambda c, t: c.post(f"/admin/workflows/workitem/{t.pk}/decide/",
                            {"decision": "approve"}),
        lambda t: Approval.objects.filter(work_item=t).count(), changed,
        event="work_item.approved"),
    ("workflows.WorkItem", "workflows_workitem_replay"): Case(
        ACTORS, _build_failed,
        lambda c, t: c.post(f"/admin/workflows/workitem/{t.pk}/replay/", {"from": "start"}),
        lambda t: WorkItem.objects.filter(replay_of=t).count(), changed,
        event="work_item.replayed"),
    ("workflows.WorkItem", "workflows_workitem_failed_replay"): Case(
        ACTORS, _build_failed,
        lambda c, t: c.post("/admin/workflows/workitem/failed/replay/", {
            "workflow": str(t.workflow_id), "position": "1", "code": "boom", "confirm": "yes"}),
        _batches_with, changed, event="replay_batch.created"),
    ("workflows.WorkItem", "workflows_workitem_failed"): Case(
        EVERYONE, _build_failed, lambda c, t: c.get("/admin/workflows/workitem/failed/"),
        lambda t: None, lambda t, before, after, body: t.workflow.name in body,
        refused_statuses=(200, 403), event=None),
    ("workflows.WorkItem", "workflows_workitem_replay_batch"): Case(
        EVERYONE, _build_batch,
        lambda c, t: c.get(f"/admin/workflows/workitem/replay-batches/{t.pk}/"),
        lambda t: None, lambda t, before, after, body: t.label in body, event=None),
    ("auxot.AuditEvent", "auxot_auditevent_export"): Case(
        frozenset({ADMIN, AUDITOR}), _build_audit_row,
        lambda c, t: c.get("/admin/auxot/auditevent/export.csv"),
        lambda t: None, lambda t, before, after, body: t.actor_label in body,
        refused_statuses=(200, 403), event=None),
    ("auth.User", "auth_user_password_change"): Case(
        SUPERUSERS_ONLY, lambda w, org: w.owner(org),
        lambda c, t: c.post(f"/admin/auth/user/{t.pk}/password/", {
            "password1": "Forged-pass-42!", "password2": "Forged-pass-42!",
            "usable_password": "true"}),
        lambda t: get_user_model().objects.get(pk=t.pk).password, changed, event="user.changed"),
    ("urls", "admin-poll-stuck"): Case(
        EVERYONE, lambda w, org: w.item(org),
        lambda c, t: c.post("/admin/poll-stuck/", {"poll": json.dumps({"work_id": str(t.pk)})}),
        lambda t: None,
        lambda t, before, after, body: 'id="poll-result"' in body and str(t.pk) in body,
        refused_statuses=(200, 403), event=None),
}


# --- enumerating the registry -------------------------------------------------------------

STANDARD_SUFFIXES = ("_changelist", "_add", "_history", "_delete", "_change")
STANDARD_SITE_URLS = {"index", "login", "logout", "password_change", "password_change_done",
                      "autocomplete", "jsi18n", "view_on_site", "app_list", None}


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def registered_actions_and_urls(probe_user) -> set[tuple[str, str]]:
    superuser = get_user_model()(is_superuser=True, is_staff=True, is_active=True)
    found = set()
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        offered = model_admin.get_actions(_request(probe_user))
        for name in model_admin.get_actions(_request(superuser)):
            if name != "delete_selected" or name in offered:
                found.add((label, name))
        for pattern in model_admin.get_urls():
            name = getattr(pattern, "name", None)
            info = f"{model._meta.app_label}_{model._meta.model_name}"
            if name is None or name in {info + suffix for suffix in STANDARD_SUFFIXES}:
                continue
            found.add((label, name))
    for pattern in admin.site.get_urls():
        if isinstance(pattern, URLPattern) and pattern.name not in STANDARD_SITE_URLS:
            found.add(("site", pattern.name))
    for pattern in get_resolver().url_patterns:
        if isinstance(pattern, URLPattern) and str(pattern.pattern).startswith("admin/"):
            found.add(("urls", pattern.name))
    return found


def test_every_admin_action_and_url_has_a_case(world):
    found = registered_actions_and_urls(world.user)
    missing, stale = found - set(CASES), set(CASES) - found
    assert not missing, f"admin actions/URLs without a per-object role case: {sorted(missing)}"
    assert not stale, f"cases for actions/URLs that no longer exist: {sorted(stale)}"


def test_every_auxot_action_is_declared_per_object(world):
    """Belt and braces: each org-scoped action goes through `org_action`."""
    superuser = get_user_model()(is_superuser=True, is_staff=True, is_active=True)
    for model, model_admin in admin.site._registry.items():
        if not hasattr(model_admin, "org_path"):
            continue
        for name, (func, *_rest) in model_admin.get_actions(_request(superuser)).items():
            if name != "delete_selected":
                assert getattr(func, "org_roles", None) is not None, (model, name)


# Org actions that do not bound their selection, and why each need not (`org_action`'s
# at_once=None). Every other one declares how many objects one request takes.
UNBOUNDED_ACTIONS = {
    # Reads the selection's distinct endpoints: a handful, whatever is selected.
    ("intakes.CallbackDelivery", "close_endpoint_circuit"),
    # Bounds itself: cancels the oldest 500 and says how many are left; the canceled leave
    # the selection's active items, so running it again takes the next ones.
    ("workflows.WorkItem", "cancel_selected"),
    # Writes one background batch per organization; the items are replayed outside requests.
    ("workflows.WorkItem", "replay_selected"),
}


# The rest: each declares how many objects one request takes (a larger selection is refused).
BOUNDED_ACTIONS = [
    ("intakes.Intake", "deactivate_selected"), ("intakes.Intake", "reactivate_selected"),
    ("intakes.Intake", "rotate_signing_secret"), ("intakes.Intake", "send_test_callback"),
    ("intakes.Intake", "enable_callbacks"), ("intakes.CallbackDelivery", "redeliver_now"),
    ("apikeys.ApiKey", "revoke_selected"),
]


def _org_actions() -> dict[tuple[str, str], Callable]:
    superuser = get_user_model()(is_superuser=True, is_staff=True, is_active=True)
    return {(model._meta.label, name): func
            for model, model_admin in admin.site._registry.items()
            if hasattr(model_admin, "org_path")
            for name, (func, *_rest) in model_admin.get_actions(_request(superuser)).items()
            if name != "delete_selected"}


def test_every_org_action_says_how_many_objects_one_request_takes(db):
    """An action working object by object inside the request ("Select all" over a long list:
    a transaction, an audit row, maybe a request to a receiver each) ended at the web
    server's timeout halfway. Each declares its bound, or is listed above with its reason."""
    actions = _org_actions()
    unbounded = {key for key, func in actions.items() if func.at_once is None}
    assert unbounded == UNBOUNDED_ACTIONS
    assert set(actions) - unbounded == set(BOUNDED_ACTIONS)
    assert all(actions[key].at_once > 0 for key in BOUNDED_ACTIONS)


@pytest.mark.parametrize("key", BOUNDED_ACTIONS, ids=lambda key: f"{key[0]}:{key[1]}")
def test_a_selection_over_an_actions_bound_is_refused_whole(client, world, key, monkeypatch):
    """Over its bound an action does nothing at all (done in part, a second run could not
    tell the done from the rest) and says so; the same user's same selection within the
    bound takes effect (the refusal is the bound, not the role)."""
    func, case = _org_actions()[key], CASES[key]
    client.force_login(world.user)  # org B's admin: allowed every action on B's objects
    target = case.build(world, world.cast.org_b)
    monkeypatch.setattr(func, "at_once", 0)
    before = case.probe(target)
    response = case.send(client, target)
    body = _body(client.get(response["Location"]) if response.status_code == 302 else response)
    assert not case.effect(target, before, case.probe(target), body)
    assert "Nothing was done: 1 " in body and "takes at most 0 at once" in body
    monkeypatch.setattr(func, "at_once", 1)
    _response, body, took_effect = _attempt(client, case, target)
    assert took_effect, body[:500]


# --- the class test -----------------------------------------------------------------------

def _attempt(client, case: Case, target):
    before = case.probe(target)
    response = case.send(client, target)
    body = _body(response)
    return response, body, case.effect(target, before, case.probe(target), body)


@pytest.mark.parametrize("key", list(CASES), ids=lambda key: f"{key[0]}:{key[1]}")
def test_role_is_checked_in_each_objects_own_org(client, world, key):
    case = CASES[key]
    org_a, org_b = world.cast.org_a, world.cast.org_b
    target_a, target_b = case.build(world, org_a), case.build(world, org_b)
    client.force_login(world.user)

    response, body, took_effect = _attempt(client, case, target_a)
    if world.role_in_a in case.roles:
        assert response.status_code < 400 and took_effect, (response.status_code, body[:500])
    else:
        assert response.status_code in case.refused_statuses, (response.status_code, body[:500])
        assert not took_effect
        assert not SECRET.search(body), "a secret on a refused page"
        for token in world.tokens:
            assert token not in body

    if not case.roles:  # superusers only: the proof that it works at all is a superuser's
        actor = Client()
        actor.force_login(get_user_model().objects.create_superuser("root", "r@example.com",
                                                                    "pw"))
        response, body, took_effect = _attempt(client, case, target_b)
        assert response.status_code in case.refused_statuses and not took_effect
        before = set(AuditEvent.objects.values_list("pk", flat=True))
        response, body, took_effect = _attempt(actor, case, target_b)
        acting, org = actor.session["_auth_user_id"], None
    else:
        before = set(AuditEvent.objects.values_list("pk", flat=True))
        response, body, took_effect = _attempt(client, case, target_b)
        # Whatever a person does here is audited with where they did it from.
        unplaced = AuditEvent.objects.exclude(pk__in=before).filter(
            actor_user__isnull=False).exclude(ip="127.0.0.1")
        assert not unplaced.exists(), list(unplaced.values_list("event", "ip"))
        acting, org = world.user.pk, org_b.pk
    assert response.status_code < 400 and took_effect, (response.status_code, body[:500])
    # ... and on the trail: its event, by this user, in the object's organization.
    new = AuditEvent.objects.exclude(pk__in=before)
    if case.event is not None:
        assert new.filter(event=case.event, actor_user_id=acting, org_id=org,
                          ip="127.0.0.1").exists(), list(new.values_list("event", "org_id"))
    else:
        assert not new.filter(actor_user__isnull=False).exists(), list(
            new.values_list("event", flat=True))


# --- the reported reproduction, on its own --------------------------------------------------

def _two_hats(cast, role_in_a: str = AUDITOR):
    user = get_user_model().objects.create_user("two_hats", "t@example.com", "pw",
                                                is_staff=True)
    Membership.objects.create(user=user, org=cast.org_a, role=role_in_a)
    Membership.objects.create(user=user, org=cast.org_b, role=ADMIN)
    return user


def test_auditor_in_one_org_admin_in_another_cannot_rotate_the_first_orgs_secret(
        client, cast, cb_intake):
    before = _secret_of(cb_intake)
    client.force_login(_two_hats(cast))
    response = client.post(INTAKES, {"action": "rotate_signing_secret",
                                     "_selected_action": [str(cb_intake.pk)]})
    assert response.status_code == 403
    assert "whsec_" not in response.content.decode()
    assert _secret_of(cb_intake) == before
    assert not AuditEvent.objects.filter(event="intake.signing_secret_rotated").exists()


def test_one_foreign_object_refuses_the_whole_action(client, world):
    """No partial application: org B's intake stays active when org A's is also selected."""
    intake_a, intake_b = world.intake(world.cast.org_a), world.intake(world.cast.org_b)
    client.force_login(world.user)
    response = client.post(INTAKES, {"action": "deactivate_selected", "confirmed": "yes",
                                     "_selected_action": [str(intake_a.pk), str(intake_b.pk)]})
    assert response.status_code == 403
    assert Intake.objects.filter(pk__in=[intake_a.pk, intake_b.pk], active=True).count() == 2


@pytest.mark.parametrize("role_in_a", [AUDITOR, MEMBER])
def test_select_across_refuses_when_the_list_spans_a_foreign_org(client, cast, intake_a,
                                                                  role_in_a):
    workflow_b = make_workflow(cast.org_b, [("transform", {"expression": "input"})], name="B")
    intake_b = intake_create(org=cast.org_b, workflow=workflow_b, name="Intake B")
    client.force_login(_two_hats(cast, role_in_a))
    response = client.post(INTAKES, {"action": "deactivate_selected", "confirmed": "yes",
                                     "select_across": "1",
                                     "_selected_action": [str(intake_b.pk)]})
    assert response.status_code == 403
    assert Intake.objects.filter(pk__in=[intake_a.pk, intake_b.pk], active=True).count() == 2


def test_a_malformed_selected_id_is_400_not_500(client, cast, intake_a):
    client.force_login(cast.admin_a)
    response = client.post(INTAKES, {"action": "deactivate_selected", "confirmed": "yes",
                                     "_selected_action": [str(intake_a.pk), "nope"]})
    assert response.status_code == 400
    assert Intake.objects.get(pk=intake_a.pk).active


def _add_posts(org, workflow, team, label: str) -> dict[str, dict]:
    management = {f"{prefix}-{name}": value for prefix in ("steps", "intakes")
                  for name, value in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"))}
    return {
        f"{INTAKES}add/": {"workflow": workflow.pk, "name": label, "callback_url": ""},
        "/admin/workflows/workflow/add/": {
            "org": org.pk, "name": label, "slug": label, "description": "", "active": "on",
            "input_schema": "null", "created_at_0": "2026-01-01", "created_at_1": "00:00:00",
            **management},
        "/admin/apikeys/apikey/add/": {"org": org.pk, "label": label, "kind": "team",
                                       "team": team.pk},
    }


def _created(label: str) -> list[bool]:
    return [Intake.objects.filter(name=label).exists(),
            Workflow.objects.filter(name=label).exists(),
            ApiKey.objects.filter(label=label).exists()]


@pytest.mark.parametrize("role_in_a", [AUDITOR, MEMBER])
def test_add_views_refuse_a_foreign_org_named_in_a_forged_post(client, cast, workflow_a,
                                                               role_in_a):
    client.force_login(_two_hats(cast, role_in_a))
    for url, data in _add_posts(cast.org_a, workflow_a, cast.team_a, "sneaky").items():
        client.post(url, data)
    if role_in_a == AUDITOR:  # members may issue their own personal keys, auditors may not
        client.post("/admin/apikeys/apikey/add/", {"org": cast.org_a.pk, "label": "sneaky",
                                                   "kind": "user"})
    assert _created("sneaky") == [False, False, False]
    # The same forms naming org B, where the user is an admin, go through.
    workflow_b = make_workflow(cast.org_b, [("transform", {"expression": "input"})], name="B")
    team_b = cast.org_b.teams.create(name="Ops")
    for url, data in _add_posts(cast.org_b, workflow_b, team_b, "fine").items():
        client.post(url, data)
    assert _created("fine") == [True, True, True]
