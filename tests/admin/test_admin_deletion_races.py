"""An admin action on an object that someone else deletes at the same instant.

The admin reads the object (its changelist selection, its page), then writes it; the
deletion commits in between. Every action and change-form save ends with the admin's
ordinary message ("… was deleted by someone else"), never a 500, never a half-applied
change and never an audit row for a change that did not happen. Forced on PostgreSQL: the
deletion has deleted the row but not committed when the action comes to write it, so the
action waits on the deletion's row lock, then finds no row.

Every changelist action of every registered admin is listed in ACTIONS, with its race
here or the reason it needs none: a new action fails test_every_admin_action_is_covered
until it gets one or the other.
"""

import re
import threading
import time

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.db import connection, connections, transaction
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_issue
from auxot.admin_base import AuditedAdminMixin
from auxot.models import AuditEvent
from intakes.models import Intake
from intakes.services import intake_create
from tests.admin.test_admin_org_fixed import BUILDERS, _form_data, _org_placed_admins
from tests.conftest import make_workflow
from workflows.models import Workflow

GONE = "was deleted by someone else"


def on_postgresql(test):
    return pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")(
        pytest.mark.django_db(transaction=True)(test))


def _waiting_on_a_lock() -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                       "current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0] > 0


def _deleted_meanwhile(delete, act):
    """Run `act` while `delete` has deleted its rows in a transaction not yet committed;
    commit once `act` waits on its lock. Returns what `act` returned."""
    holding, waited = threading.Event(), []

    def deleter():
        try:
            with transaction.atomic():
                delete()
                holding.set()
                for _ in range(1000):  # until the action waits on our lock (not a timing)
                    if _waiting_on_a_lock():
                        waited.append(True)
                        break
                    time.sleep(0.01)
        finally:
            connection.close()

    thread = threading.Thread(target=deleter)
    thread.start()
    assert holding.wait(30)
    try:
        return act()
    finally:
        thread.join(30)
        assert waited, "the action never waited on the deletion: the test proves nothing"


def _shown(response) -> str:
    return " ".join(str(m) for m in get_messages(response.wsgi_request))


def _action(client, model, name, obj, **extra):
    meta = model._meta
    return client.post(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"),
                       {"action": name, "_selected_action": [str(obj.pk)], **extra})


def _events(*names) -> int:
    return AuditEvent.objects.filter(event__in=names).count()


def _key(cast):
    return apikey_issue(org=cast.org_a, label="ci", user=cast.admin_a).key


def _intake(cast, **fields):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})],
                             name="Hooked")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Hook",
                           created_by=cast.admin_a)
    if fields:
        Intake.objects.filter(pk=intake.pk).update(**fields)
    return intake


def _gone_said(response):
    assert response.status_code in (200, 302), response.status_code
    shown = _shown(response) + (response.content.decode() if response.status_code == 200
                                else "")
    assert GONE in shown, shown[:2000]


# Each race: (build the object, run the action by the admin's pages, events it must not
# leave when the object was gone).
def _revoke_selected(client, obj):
    return _action(client, ApiKey, "revoke_selected", obj)


def _revoke_page(client, obj):
    return client.post(reverse("admin:apikeys_apikey_revoke", args=[obj.pk]))


def _bulk_active(name):
    def act(client, obj):
        return _action(client, Intake, name, obj, confirmed="yes")
    return act


def _active_page(state):
    def act(client, obj):
        return client.post(reverse("admin:intakes_intake_set_active", args=[obj.pk, state]))
    return act


def _workflow(cast):
    return make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Run me")


def _run_page(client, obj):
    return client.post(reverse("admin:workflows_workflow_run", args=[obj.pk]),
                       {"input": "{}"})


RACES = {
    "workflows.Workflow run page": (_workflow, _run_page, ["work_item.created"]),
    "apikeys.ApiKey.revoke_selected": (_key, _revoke_selected, ["apikey.revoked"]),
    "apikeys.ApiKey revoke page": (_key, _revoke_page, ["apikey.revoked"]),
    "intakes.Intake.deactivate_selected": (_intake, _bulk_active("deactivate_selected"),
                                           ["intake.deactivated"]),
    "intakes.Intake.reactivate_selected": (
        lambda cast: _intake(cast, active=False, deactivated_at=timezone.now()),
        _bulk_active("reactivate_selected"), ["intake.reactivated"]),
    "intakes.Intake deactivate page": (_intake, _active_page("off"), ["intake.deactivated"]),
    "intakes.Intake.rotate_signing_secret": (
        _intake, lambda client, obj: _action(client, Intake, "rotate_signing_secret", obj),
        ["intake.signing_secret_rotated", "intake.signing_secret_created"]),
    "intakes.Intake.enable_callbacks": (
        lambda cast: _intake(cast, callback_disabled_at=timezone.now(),
                             callback_disabled_reason="410 Gone"),
        lambda client, obj: _action(client, Intake, "enable_callbacks", obj),
        ["intake.callback_enabled"]),
}

# Every changelist action of a registered admin, and where its race is (or why none).
RETENTION = ("work items and their deliveries are deleted only by retention (finished "
             "ones) and with them: tests/intakes/test_retention_races.py forces it")
ACTIONS = {
    **{name: "race" for name in RACES if " " not in name},
    "workflows.WorkItem.cancel_selected": RETENTION + " (cancel, 409 counted as skipped)",
    "workflows.WorkItem.replay_selected": (
        "writes one batch row of the ids it reads; the batch skips an item gone by then as "
        "'not found', and work_item_replay takes each item's row lock and refuses one "
        "retention deleted meanwhile (workflows/replay.py)"),
    "intakes.CallbackDelivery.redeliver_now": RETENTION + " (redeliver)",
    "intakes.CallbackDelivery.close_endpoint_circuit": (
        "writes the endpoints' circuit rows (never deleted from the admin), not the "
        "selected deliveries; deliveries gone meanwhile just add no endpoint"),
    "intakes.Intake.send_test_callback": (
        "changes nothing on the intake; its audit row records the test send it made"),
    "django_q.Failure.resubmit_task": "race",
    "django_q.Success.resubmit_task": (
        "the same audited wrapper as django_q.Failure.resubmit_task (raced here)"),
}
# "Delete selected" is Django's action calling the admin's delete_queryset: one, shared by
# every admin (AuditedAdminMixin, checked below), raced here against a second deletion.
DELETE_SELECTED = "delete_selected"


def _registered_actions() -> set[str]:
    root = get_user_model()(username="root", is_superuser=True, is_staff=True, is_active=True)
    request = RequestFactory().get("/admin/")
    request.user = root
    names = set()
    for model, model_admin in admin.site._registry.items():
        for name in model_admin.get_actions(request):
            if name == DELETE_SELECTED:
                assert type(model_admin).delete_queryset is AuditedAdminMixin.delete_queryset, (
                    f"{model._meta.label}: its own delete_queryset needs its own race test")
                continue
            names.add(f"{model._meta.label}.{name}")
    return names


def test_every_admin_action_is_covered():
    assert _registered_actions() == set(ACTIONS), (
        "an admin action without a race test here (RACES) or a reason (ACTIONS)")


@pytest.mark.parametrize("race", RACES)
@on_postgresql
def test_an_action_on_an_object_deleted_meanwhile_says_so(race, cast, client):
    build, act, events = RACES[race]
    obj = build(cast)
    client.force_login(cast.admin_a)
    before = _events(*events)
    response = _deleted_meanwhile(lambda: type(obj)._default_manager.filter(
        pk=obj.pk).delete(), lambda: act(client, obj))
    _gone_said(response)
    assert not type(obj)._default_manager.filter(pk=obj.pk).exists()
    assert _events(*events) == before, f"{race}: audited a change that did not happen"


@on_postgresql
def test_resubmitting_a_task_deleted_meanwhile_audits_nothing(cast, client):
    from django_q.models import Failure, OrmQ

    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    task = Failure.objects.create(id="a" * 32, name="t", func="math.floor", args=(1.5,),
                                  started=timezone.now(), stopped=timezone.now(),
                                  success=False, result="boom")
    client.force_login(root)
    response = _deleted_meanwhile(lambda: Failure.objects.filter(pk=task.pk).delete(),
                                  lambda: _action(client, Failure, "resubmit_task", task))
    assert response.status_code == 302
    assert not AuditEvent.objects.filter(event__endswith=".resubmit_task").exists()
    assert not OrmQ.objects.exists()  # nothing resubmitted


@on_postgresql
def test_delete_selected_racing_another_deletion_audits_one_deletion(cast, client):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    client.force_login(root)

    def other_admin_deletes():
        from auxot.services import audit_record

        audit_record(event="workflow.deleted", org=cast.org_a, obj=workflow,
                     actor_label="colleague")
        Workflow.objects.filter(pk=workflow.pk).delete()

    response = _deleted_meanwhile(other_admin_deletes, lambda: _action(
        client, Workflow, DELETE_SELECTED, workflow, post="yes"))
    assert response.status_code == 302
    assert not Workflow.objects.exists()
    assert AuditEvent.objects.filter(event="workflow.deleted").count() == 1


def _change_url(obj) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


@pytest.mark.parametrize("model", [m for m, _a in _org_placed_admins()
                                   if m._meta.label not in ("auxot.AuditEvent",
                                                            "apikeys.ApiKey",
                                                            "workflows.WorkItem")],
                         ids=lambda m: m._meta.label)
@on_postgresql
def test_a_change_form_saved_after_its_object_was_deleted_saves_nothing(model, cast, client):
    """Every editable change page (keys, audit rows and work items have none)."""
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    client.force_login(root)
    obj = BUILDERS[model](cast)
    data = {**_form_data(client.get(_change_url(obj)).content.decode()), "_save": "1"}
    assert data.get("_auxot_version"), model._meta.label
    before = AuditEvent.objects.filter(event__endswith=".changed").count()
    response = _deleted_meanwhile(
        lambda: model._default_manager.filter(pk=obj.pk).delete(),
        lambda: client.post(_change_url(obj), data))
    assert response.status_code == 200, response.status_code
    assert GONE in response.content.decode()
    assert not model._default_manager.filter(pk=obj.pk).exists()
    assert AuditEvent.objects.filter(event__endswith=".changed").count() == before


# The services the actions call, on any database: the object read, then deleted before the
# service writes it (no lock to wait on): the same refusal, nothing written or audited.
def _stale_services(cast):
    from apikeys.services import apikey_revoke
    from intakes.callbacks import intake_callback_enable, intake_signing_secret_rotate
    from intakes.services import intake_set_active, intake_update

    return {
        "apikey_revoke": (_key, lambda key: apikey_revoke(key=key, revoked_by=cast.admin_a)),
        "intake_set_active off": (_intake, lambda i: intake_set_active(intake=i, active=False)),
        "intake_set_active on": (lambda cast: _intake(cast, active=False),
                                 lambda i: intake_set_active(intake=i, active=True)),
        "intake_callback_enable": (
            lambda cast: _intake(cast, callback_disabled_at=timezone.now()),
            lambda i: intake_callback_enable(intake=i)),
        "intake_signing_secret_rotate": (_intake,
                                         lambda i: intake_signing_secret_rotate(intake=i)),
        "intake_update": (_intake, lambda i: intake_update(intake=i, changes={"name": "New"})),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("service", ["apikey_revoke", "intake_set_active off",
                                     "intake_set_active on", "intake_callback_enable",
                                     "intake_signing_secret_rotate", "intake_update"])
def test_a_service_on_an_object_deleted_since_it_was_read_refuses_and_writes_nothing(
        service, cast):
    from auxot.errors import ObjectGoneError

    build, call = _stale_services(cast)[service]
    obj = build(cast)
    events = AuditEvent.objects.count()
    type(obj)._default_manager.filter(pk=obj.pk).delete()
    deleted = AuditEvent.objects.count()
    with pytest.raises(ObjectGoneError) as refused:
        call(obj)
    assert GONE in refused.value.detail and refused.value.code == "conflict"
    assert not type(obj)._default_manager.filter(pk=obj.pk).exists()
    assert AuditEvent.objects.count() == deleted >= events


STALE_SERVICES = ["apikey_revoke", "intake_set_active off", "intake_set_active on",
                  "intake_callback_enable", "intake_signing_secret_rotate", "intake_update"]


def test_the_after_commit_list_names_every_stale_service(cast):
    assert sorted(STALE_SERVICES) == sorted(_stale_services(cast))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("service", STALE_SERVICES)
def test_a_service_whose_object_is_deleted_right_after_its_commit_does_not_fail(
        service, cast, monkeypatch):
    """The other gap: the action committed, then another admin deleted the object before
    the service returned. Nothing is read back after the commit, so a done action is not
    reported as an error (enabling callbacks re-read the intake there: DoesNotExist, a
    500). The object is deleted by a hook on the commit of the transaction that audits it."""
    import apikeys.services
    import intakes.callbacks
    import intakes.services

    build, call = _stale_services(cast)[service]
    obj = build(cast)
    if service == "intake_set_active on":  # as built: the deletion hook needs it audited
        Intake.objects.filter(pk=obj.pk).update(active=False)
    hooked = []
    for module in (apikeys.services, intakes.callbacks, intakes.services):
        def audit(*args, _original=module.audit_record, **kwargs):
            row = _original(*args, **kwargs)
            target = kwargs.get("obj")
            if target is not None and target.pk == obj.pk and not hooked:
                hooked.append(target)
                transaction.on_commit(
                    lambda: type(target)._default_manager.filter(pk=target.pk).delete())
            return row
        monkeypatch.setattr(module, "audit_record", audit)
    call(obj)
    assert hooked, "the service audited nothing about its object: no commit to hook"
    assert not type(obj)._default_manager.filter(pk=obj.pk).exists()


@on_postgresql
@pytest.mark.parametrize("page", ["delete page", "delete selected"])
def test_a_deletion_waiting_on_a_run_that_adds_a_work_item_deletes_nothing(page, cast,
                                                                            client):
    """The other way round: a person runs the workflow ("New task") while a superuser
    deletes it. The run holds the workflow's row until its item commits; the deletion,
    which listed no work item to keep it, waits, then finds one: nothing is deleted and
    the page says why (it was ProtectedError, a 500)."""
    from workflows.services import work_item_run

    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    workflow = _workflow(cast)
    client.force_login(root)
    delete_url = reverse("admin:workflows_workflow_delete", args=[workflow.pk])

    def delete():
        if page == "delete page":
            return client.post(delete_url, {"post": "yes"})
        return _action(client, Workflow, DELETE_SELECTED, workflow, post="yes")

    response = _deleted_meanwhile(
        lambda: work_item_run(workflow=workflow, input={}, user=cast.admin_a), delete)
    assert response.status_code == 302
    assert "Nothing was deleted: someone else added work items" in _shown(response)
    assert Workflow.objects.filter(pk=workflow.pk).exists()
    assert not AuditEvent.objects.filter(event="workflow.deleted").exists()


# --- A deletion in the MIDDLE of a bulk action's selection ---------------------------------
# Every bulk action has one rule (auxot/admin_base.py `each_still_there`): it carries on past
# an object deleted meanwhile, applies to every selected object still there (each audited as
# usual) and ends with one message naming how many it did and how many were gone. Each
# bulk action in RACES is driven here with three objects selected, one deleted by another
# admin while the action runs; a new one fails test_every_raced_bulk_action_is_driven_mid_way.
def _three_keys(cast):
    return [apikey_issue(org=cast.org_a, label=f"ci {n}", user=cast.admin_a).key
            for n in range(3)]


def _three_intakes(**fields):
    def build(cast):
        workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})],
                                 name="Hooked")
        intakes = [intake_create(org=cast.org_a, workflow=workflow, name=f"Hook {n}",
                                 created_by=cast.admin_a) for n in range(3)]
        if fields:
            Intake.objects.filter(pk__in=[i.pk for i in intakes]).update(**fields)
        return intakes
    return build


def _three_failures(cast):
    from django_q.models import Failure

    return [Failure.objects.create(id=f"{n}" * 32, name=f"t{n}", func="math.floor",
                                   args=(1.5,), started=timezone.now(),
                                   stopped=timezone.now(), success=False, result="boom")
            for n in range(3)]


def _many(model, name, **extra):
    def act(client, objs):
        meta = model._meta
        return client.post(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"),
                           {"action": name, "_selected_action": [str(o.pk) for o in objs],
                            **extra})
    return act


def _superuser_client(cast, client):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    client.force_login(root)


# (build three objects, run the action on them, the audit events one applied object gets,
# log in). Audit rows name their object: the two still there are audited, the gone one not.
MID_WAY = {
    "apikeys.ApiKey.revoke_selected": (
        _three_keys, _many(ApiKey, "revoke_selected"), ["apikey.revoked"], None),
    "intakes.Intake.deactivate_selected": (
        _three_intakes(), _many(Intake, "deactivate_selected", confirmed="yes"),
        ["intake.deactivated"], None),
    "intakes.Intake.reactivate_selected": (
        _three_intakes(active=False, deactivated_at=timezone.now()),
        _many(Intake, "reactivate_selected", confirmed="yes"), ["intake.reactivated"], None),
    "intakes.Intake.rotate_signing_secret": (
        _three_intakes(), _many(Intake, "rotate_signing_secret"),
        ["intake.signing_secret_rotated"], None),
    "intakes.Intake.enable_callbacks": (
        _three_intakes(callback_disabled_at=timezone.now(),
                       callback_disabled_reason="410 Gone"),
        _many(Intake, "enable_callbacks"), ["intake.callback_enabled"], None),
    "django_q.Failure.resubmit_task": (
        _three_failures, lambda client, objs: _many(type(objs[0]), "resubmit_task")(
            client, objs), ["failure.resubmit_task"], _superuser_client),
}


def test_every_raced_bulk_action_is_driven_mid_way():
    bulk = {name for name, how in ACTIONS.items() if how == "race" and " " not in name}
    assert bulk == set(MID_WAY), "a bulk action not driven with a deletion mid-way"


@pytest.mark.parametrize("position", [0, 1], ids=["first-built", "second-built"])
@pytest.mark.parametrize("race", MID_WAY)
@on_postgresql
def test_a_bulk_action_carries_on_past_an_object_deleted_mid_way(race, position, cast,
                                                                   client):
    """Two positions: whatever order the action takes them in, one of the two is not the
    last it meets, so an action that stopped at the gone one would leave one undone."""
    build, act, events, login = MID_WAY[race]
    objs = build(cast)
    (login or (lambda cast, client: client.force_login(cast.admin_a)))(cast, client)
    gone = objs[position]
    model = type(gone)
    kept = {str(o.pk) for o in objs if o is not gone}
    before = set(AuditEvent.objects.values_list("pk", flat=True))
    response = _deleted_meanwhile(lambda: model._default_manager.filter(pk=gone.pk).delete(),
                                  lambda: act(client, objs))
    assert response.status_code in (200, 302), response.status_code
    note = f"1 {model._meta.verbose_name} was deleted by someone else meanwhile"
    said = [str(m) for m in get_messages(response.wsgi_request)]
    with_note = [m for m in said if note in m]
    assert len(with_note) == 1, said  # one message: how many done, how many gone
    assert re.search(r"\b2\b", with_note[0].split(note)[0]), with_note  # the two still there
    audited = AuditEvent.objects.exclude(pk__in=before).filter(event__in=events)
    assert sorted(audited.values_list("object_id", flat=True)) == sorted(kept), (
        f"{race}: not applied (and audited) to exactly the objects still there")
