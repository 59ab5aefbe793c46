"""Handoff contracts (input and output schemas) and canceling work."""

import pytest
from django.core.exceptions import ValidationError

from apikeys.services import apikey_issue
from auxot.models import AuditEvent
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow, trigger
from workflows.batch import work_item_process
from workflows.models import Step, StepRun, WorkItem
from workflows.services import work_item_cancel

SCHEMA = {"type": "object", "required": ["customer", "amount"],
          "properties": {"customer": {"type": "string"},
                         "amount": {"type": "number", "minimum": 0},
                         "lines": {"type": "array", "items": {"type": "integer"}}}}


def _intake(cast, steps, schema=None):
    wf = make_workflow(cast.org_a, steps, name="Contract")
    wf.input_schema = schema
    wf.save()
    return intake_create(org=cast.org_a, workflow=wf, name="contract")


def test_input_violations_get_422_with_every_pointer_and_no_item(cast, api, member_token):
    intake = _intake(cast, [("transform", {"expression": "input"})], SCHEMA)
    response = trigger(api, intake.pk, member_token,
                       body={"amount": -1, "lines": [1, "two"]})
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_failed"
    assert {e["pointer"] for e in body["errors"]} == {"/amount", "/customer", "/lines/1"}
    assert not WorkItem.objects.exists()


def test_valid_input_is_accepted(cast, api, member_token):
    intake = _intake(cast, [("transform", {"expression": "input"})], SCHEMA)
    assert trigger(api, intake.pk, member_token,
                   body={"customer": "A", "amount": 3}).status_code == 202


def test_invalid_schema_is_refused_when_saved(cast):
    wf = make_workflow(cast.org_a, [], name="Bad")
    wf.input_schema = {"type": "banana"}
    with pytest.raises(ValidationError):
        wf.full_clean()
    step = Step(workflow=wf, position=1, name="s", kind="transform",
                config={"expression": "input"}, output_schema={"required": "x"})
    with pytest.raises(ValidationError):
        step.full_clean()


def test_output_violation_fails_bad_handoff_naming_step_and_pointer(cast, api, member_token):
    intake = _intake(cast, [("transform", {"expression": "{name: input.name}"}),
                            ("transform", {"expression": "previous"})])
    Step.objects.filter(workflow=intake.workflow, position=1).update(
        name="Enrich", output_schema={"type": "object", "required": ["customer"]})
    work_id = trigger(api, intake.pk, member_token, body={"name": "x"}).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    body = api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(member_token)).json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "bad_handoff"
    assert body["error"]["step"] == "Enrich"
    assert body["error"]["pointer"] == "/customer"
    assert body["diagnosis"] == "Failed at step 'Enrich': output missing /customer (bad handoff)."
    assert [s["status"] for s in body["steps"]] == ["failed", "skipped"]


def _cancel(api, intake, work_id, token):
    return api.post(f"/v1/intake/{intake.pk}/work/{work_id}/cancel",
                    data={"reason": "duplicate"}, format="json", **bearer(token))


def test_cancel_pending_item_over_api(cast, api, member_token):
    intake = _intake(cast, [("delay", {"seconds": 60})])
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    response = _cancel(api, intake, work_id, member_token)
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"] == "canceled"
    assert "duplicate" in response.json()["error"]["message"]
    item = WorkItem.objects.get(pk=work_id)
    assert item.next_run_at is None
    event = AuditEvent.objects.get(event="work_item.canceled")
    assert event.object_id == work_id and event.extra == {"reason": "duplicate"}
    assert _cancel(api, intake, work_id, member_token).status_code == 409


@pytest.mark.parametrize(("raw", "content_type"), [
    (b"", ""), (b"", "application/json"), (b"{}", "application/json")])
def test_cancel_body_is_optional(cast, api, member_token, raw, content_type):
    intake = _intake(cast, [("delay", {"seconds": 60})])
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    response = api.generic("POST", f"/v1/intake/{intake.pk}/work/{work_id}/cancel", raw,
                           content_type=content_type, **bearer(member_token))
    assert response.status_code == 200, response.content
    assert AuditEvent.objects.get(event="work_item.canceled").extra == {"reason": ""}


@pytest.mark.parametrize(("body", "pointer"), [
    ({"reason": 42}, "/reason"), ({"reason": None}, "/reason"), ({"reason": "x" * 501}, "/reason"),
    ("duplicate", "")])
def test_bad_cancel_body_is_400_and_cancels_nothing(cast, api, member_token, body, pointer):
    intake = _intake(cast, [("delay", {"seconds": 60})])
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    response = api.post(f"/v1/intake/{intake.pk}/work/{work_id}/cancel", data=body,
                        format="json", **bearer(member_token))
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert [e["pointer"] for e in response.json()["errors"]] == [pointer]
    assert WorkItem.objects.get(pk=work_id).status == "pending"


def test_cancel_parked_item_discards_its_wait(cast, api, member_token):
    intake = _intake(cast, [("delay", {"seconds": 60})])
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    assert _cancel(api, intake, work_id, member_token).status_code == 200
    assert StepRun.objects.get(work_item_id=work_id).status == "discarded"


def test_auditor_may_not_cancel_and_outsider_gets_404(cast, api, member_token):
    intake = _intake(cast, [("delay", {"seconds": 60})])
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    auditor = apikey_issue(org=cast.org_a, label="aud", user=cast.auditor_a).token
    assert _cancel(api, intake, work_id, auditor).status_code == 403
    outsider = apikey_issue(org=cast.org_b, label="out", user=cast.outsider_b).token
    assert _cancel(api, intake, work_id, outsider).status_code == 404
    assert WorkItem.objects.get(pk=work_id).status == "pending"


def test_cancel_while_step_runs_discards_its_result(cast, monkeypatch):
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    from workflows.kinds.transform import Transform
    from workflows.services import work_item_create

    item = work_item_create(workflow=wf, input={"a": 1})
    real = Transform.execute

    def canceled_meanwhile(self, ctx):
        work_item_cancel(item=WorkItem.objects.get(pk=item.pk), user=cast.member_a)
        return real(self, ctx)

    monkeypatch.setattr(Transform, "execute", canceled_meanwhile)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.error["code"], item.output) == ("failed", "canceled", None)
    assert StepRun.objects.get(work_item=item).status == "discarded"


def test_admin_cancel_action(cast, client):
    from django.contrib.auth.models import Permission

    wf = make_workflow(cast.org_a, [("delay", {"seconds": 60})])
    from workflows.services import work_item_create

    item = work_item_create(workflow=wf, input={})
    cast.admin_a.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_workitem", "change_workitem"]))
    client.force_login(cast.admin_a)
    response = client.post("/admin/workflows/workitem/", {
        "action": "cancel_selected", "_selected_action": [str(item.pk)]})
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.error["code"] == "canceled"
    assert AuditEvent.objects.get(event="work_item.canceled").actor_user == cast.admin_a


def test_unclaimed_item_with_live_worker_says_queued(cast, api, member_token):
    from django.utils import timezone

    from workflows.services import worker_heartbeat

    intake = _intake(cast, [("transform", {"expression": "input"})])
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    worker_heartbeat(name="host:1", started_at=timezone.now())
    body = api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(member_token)).json()
    assert body["waiting_on"]["kind"] == "queue"
    assert body["diagnosis"].startswith("Queued for ")
    assert "a worker is running" in body["diagnosis"]


def test_input_violation_detail_names_the_fields_as_output_handoffs_do(cast, api, member_token):
    intake = _intake(cast, [("transform", {"expression": "input"})], SCHEMA)
    body = trigger(api, intake.pk, member_token, body={"amount": 1}).json()
    assert body["detail"] == ("The body does not match the input schema of workflow "
                              "'Contract': missing /customer.")


@pytest.mark.parametrize("how", ["engine", "cancel"])
def test_a_finished_item_is_announced_once_and_audited_once(cast, how,
                                                            django_capture_on_commit_callbacks):
    from workflows.services import work_item_create
    from workflows.signals import work_item_finished

    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    item = work_item_create(workflow=wf, input={"a": 1})
    heard = []

    def receiver(sender, work_item, **kwargs):
        heard.append((work_item.pk, work_item.status))

    work_item_finished.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            if how == "engine":
                work_item_process(work_id=item.pk, drain_seconds=0)
            else:
                work_item_cancel(item=item, user=cast.member_a)
    finally:
        work_item_finished.disconnect(receiver)
    status = "completed" if how == "engine" else "failed"
    assert heard == [(item.pk, status)]
    event = "work_item.completed" if how == "engine" else "work_item.canceled"
    assert AuditEvent.objects.filter(object_id=str(item.pk), event=event).count() == 1


def test_cancel_selected_across_a_big_history_takes_the_active_ones_a_batch_at_a_time(
        cast, client, monkeypatch, django_assert_max_num_queries):
    """"Select all" over a history canceled item by item inside the request: finished
    items were locked one by one to be skipped, and 14,000 of them took 38 s (a gunicorn
    timeout kills the request halfway). Only pending and running items are taken now,
    oldest first, CANCEL_AT_ONCE per request, and the message says how many are left."""
    from workflows import admin as workflows_admin
    from workflows.models import WorkItem
    from workflows.services import work_item_create

    monkeypatch.setattr(workflows_admin, "CANCEL_AT_ONCE", 3)
    wf = make_workflow(cast.org_a, [("delay", {"seconds": 60})])
    items = [work_item_create(workflow=wf, input={"n": n}) for n in range(5)]
    WorkItem.objects.filter(pk__in=[i.pk for i in items[:2]]).update(status="completed")
    finished = [work_item_create(workflow=wf, input={}) for _ in range(20)]
    WorkItem.objects.filter(pk__in=[i.pk for i in finished]).update(status="completed")
    client.force_login(cast.admin_a)

    def cancel_all():
        # Django's "Select all N": the action gets the whole filtered queryset.
        with django_assert_max_num_queries(50):  # not a lock per finished item
            response = client.post("/admin/workflows/workitem/", {
                "action": "cancel_selected", "select_across": "1", "index": "0",
                "_selected_action": [str(items[0].pk)]})
        assert response.status_code == 302
        page = client.get(response["Location"])
        return [str(m) for m in page.context["messages"]]

    WorkItem.objects.filter(pk__in=[i.pk for i in items[2:]]).update(status="pending")
    more = [work_item_create(workflow=wf, input={}) for _ in range(2)]  # 5 active in all
    assert cancel_all() == ["Canceled 3 work item(s). 2 more of the selection are still "
                            "pending or running: run the action again to cancel the next "
                            "ones."]
    oldest = [i.pk for i in items[2:]]
    assert set(WorkItem.objects.filter(error__code="canceled").values_list("pk", flat=True)
               ) == set(oldest)
    assert cancel_all() == ["Canceled 2 work item(s)."]
    assert WorkItem.objects.filter(error__code="canceled").count() == 5
    assert {m.pk for m in more} <= set(WorkItem.objects.filter(
        error__code="canceled").values_list("pk", flat=True))
    assert WorkItem.objects.filter(status="completed").count() == 22  # untouched


@pytest.mark.parametrize("kind", ["transform", "approval"])  # the batch path; one at a time
@pytest.mark.parametrize("outcome", ["complete", "wait", "fail"])
def test_a_cancel_while_a_step_runs_wins_whatever_the_step_returns(cast, monkeypatch, kind,
                                                                   outcome):
    """Every way the engine stores a step's outcome (a pure step's batch commit, a step with
    outside effects one at a time; completed, waiting, failed) loses to a cancel that
    committed while the step ran: the item stays canceled, the attempt is discarded, and
    the audit log holds the cancel alone."""
    from datetime import timedelta

    from django.utils import timezone

    from workflows.kinds import REGISTRY, Complete, Fail, Wait
    from workflows.services import work_item_create

    wf = make_workflow(cast.org_a, [(kind, {"expression": "input"} if kind == "transform"
                                     else {"instructions": "Check"}),
                                    ("transform", {"expression": "'next'"})])
    item = work_item_create(workflow=wf, input={"a": 1})
    returned = {"complete": Complete({"ran": True}),
                "wait": Wait(timezone.now() + timedelta(hours=1), "approval", {}),
                "fail": Fail("step_error", "it broke")}[outcome]

    def canceled_meanwhile(self, ctx):
        work_item_cancel(item=WorkItem.objects.get(pk=item.pk), user=cast.member_a)
        return returned

    monkeypatch.setattr(type(REGISTRY[kind]), "execute", canceled_meanwhile)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.error["code"], item.output) == ("failed", "canceled", None)
    assert (item.lease_token, item.next_run_at, item.waiting_on) == ("", None, "")
    assert list(StepRun.objects.filter(work_item=item).values_list("status", flat=True)) \
        == ["discarded"]
    events = set(AuditEvent.objects.filter(object_id=str(item.pk)).values_list("event",
                                                                               flat=True))
    assert events - {"work_item.created"} == {"work_item.canceled"}
