"""The approval step: waits holding no worker; decided over the API or in the admin."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from apikeys.services import apikey_issue
from auxot.models import AuditEvent
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow, trigger
from workflows.batch import work_item_process
from workflows.models import Approval, Step, WorkItem
from workflows.wake import work_items_wake


def _setup(cast, deadline=None):
    config = {"instructions": "Check the refund"}
    if deadline:
        config["deadline_seconds"] = deadline
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                    ("approval", config),
                                    ("transform", {"expression": "previous.decision"})],
                       name="Refund")
    Step.objects.filter(workflow=wf, position=2).update(name="Manager sign-off")
    return intake_create(org=cast.org_a, workflow=wf, name="refunds")


def _park(api, intake, token):
    work_id = trigger(api, intake.pk, token).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    return WorkItem.objects.get(pk=work_id)


def _decide(api, intake, item, token, decision="approve", comment="ok"):
    return api.post(f"/v1/intake/{intake.pk}/work/{item.pk}/approval",
                    data={"decision": decision, "comment": comment}, format="json",
                    **bearer(token))


def test_approval_waits_and_poll_links_the_admin(cast, api, member_token):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    assert (item.status, item.waiting_on, item.lease_token) == ("running", "approval", "")
    body = api.get(f"/v1/intake/{intake.pk}/work/{item.pk}", **bearer(member_token)).json()
    assert body["waiting_on"]["kind"] == "approval"
    assert body["waiting_on"]["instructions"] == "Check the refund"
    assert body["diagnosis"].startswith(
        "Waiting for approval at step 2 'Manager sign-off' since ")
    assert body["diagnosis"].endswith(f"approve it at /admin/workflows/workitem/{item.pk}/change/")
    assert " UTC" in body["diagnosis"]


def test_member_approves_over_api_and_item_completes(cast, api, member_token):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    response = _decide(api, intake, item, member_token, comment="fine by me")
    assert response.status_code == 200, response.content
    approval = Approval.objects.get(work_item=item)
    assert (approval.decision, approval.comment, approval.decided_by) == (
        "approve", "fine by me", cast.member_a)
    event = AuditEvent.objects.get(event="work_item.approved")
    assert event.object_id == str(item.pk) and event.actor_user == cast.member_a
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed"
    assert item.output == "approve"
    assert _decide(api, intake, item, member_token).status_code == 409  # decided once


@pytest.mark.parametrize("decision,verb", [("approve", "Approved"), ("reject", "Rejected")])
def test_the_answer_and_the_poll_say_the_decision_is_in_until_it_is_applied(
        cast, api, member_token, decision, verb):
    """The decision is the engine's to apply; until a worker does (moments), the answer and
    the poll say it was taken, by whom, not "waiting for approval"."""
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    answer = _decide(api, intake, item, member_token, decision).json()
    poll = api.get(f"/v1/intake/{intake.pk}/work/{item.pk}", **bearer(member_token)).json()
    for body in (answer, poll):
        assert body["status"] == "running"
        waiting = body["waiting_on"]
        assert (waiting["kind"], waiting["decision"], waiting["decided_by"]) == (
            "approval", decision, "member_a")
        assert waiting["decided_at"].endswith("Z")  # as every API timestamp
        assert body["diagnosis"].startswith(f"{verb} by member_a at step 2 'Manager sign-off'; "
                                            "the decision takes effect when a worker")
    work_item_process(work_id=item.pk, drain_seconds=0)
    after = api.get(f"/v1/intake/{intake.pk}/work/{item.pk}", **bearer(member_token)).json()
    assert after["status"] == ("completed" if decision == "approve" else "failed")
    assert after["waiting_on"] is None


def test_reject_fails_item_with_rejected(cast, api, member_token):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    assert _decide(api, intake, item, member_token, "reject", "too large").status_code == 200
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "failed"
    assert item.error["code"] == "rejected"
    assert "too large" in item.error["message"]
    assert AuditEvent.objects.filter(event="work_item.rejected").count() == 1


def test_auditor_and_team_key_may_not_decide_outsider_gets_404(cast, api, member_token):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    auditor = apikey_issue(org=cast.org_a, label="aud", user=cast.auditor_a).token
    assert _decide(api, intake, item, auditor).status_code == 403
    outsider = apikey_issue(org=cast.org_b, label="out", user=cast.outsider_b).token
    assert _decide(api, intake, item, outsider).status_code == 404
    assert not Approval.objects.exists()
    assert not AuditEvent.objects.filter(event__startswith="work_item.").exclude(
        event="work_item.accepted").exists()


def test_team_key_may_not_decide(cast, api):
    intake = _setup(cast)
    intake.team = cast.team_a
    intake.save()
    team_token = apikey_issue(org=cast.org_a, label="team", team=cast.team_a).token
    item = _park(api, intake, team_token)
    response = _decide(api, intake, item, team_token)
    assert response.status_code == 403
    assert "person" in response.json()["detail"]


def test_bad_decision_body_is_400(cast, api, member_token):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    response = _decide(api, intake, item, member_token, decision="maybe")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(("body", "pointers"), [
    ({"decision": "maybe"}, ["/decision"]),
    ({"comment": "no decision"}, ["/decision"]),
    ({"decision": "approve", "comment": 5}, ["/comment"]),
    ({"decision": "approve", "comment": "x" * 2001}, ["/comment"]),
    (["approve"], [""]),
    ({}, ["/decision"]),
])
def test_approval_body_errors_name_each_field(cast, api, member_token, body, pointers):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    response = api.post(f"/v1/intake/{intake.pk}/work/{item.pk}/approval", data=body,
                        format="json", **bearer(member_token))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert [e["pointer"] for e in response.json()["errors"]] == pointers
    assert not Approval.objects.filter(work_item=item).exists()


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), [
    (b'{"decision": "approve", "decision": "reject"}', "application/json", 400, "invalid_json"),
    (b"decision=approve", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b'{"decision": "approve"}', "", 415, "unsupported_media_type"),
    (b"", "application/json", 400, "invalid_request"),
])
def test_approval_body_keeps_the_strict_json_rules(cast, api, member_token, raw, content_type,
                                                   status, code):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    response = api.generic("POST", f"/v1/intake/{intake.pk}/work/{item.pk}/approval", raw,
                           content_type=content_type, **bearer(member_token))
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response["Content-Type"] == "application/problem+json"


def test_approval_comment_may_be_null_and_is_stored_empty(cast, api, member_token):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    assert _decide(api, intake, item, member_token, comment=None).status_code == 200
    assert Approval.objects.get(work_item=item).comment == ""


def test_deadline_passes_and_item_fails_approval_timeout(cast, api, member_token, time_machine):
    intake = _setup(cast, deadline=60)
    item = _park(api, intake, member_token)
    time_machine.move_to(timezone.now() + timedelta(seconds=61))
    OrmQ.objects.all().delete()  # earlier drains were consumed
    assert work_items_wake() == 1
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "failed"
    assert item.error["code"] == "approval_timeout"


def test_admin_buttons_approve(cast, api, member_token, client):
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    from django.contrib.auth.models import Permission

    cast.admin_a.user_permissions.add(Permission.objects.get(codename="view_workitem"))
    client.force_login(cast.admin_a)
    page = client.get(f"/admin/workflows/workitem/{item.pk}/change/")
    assert page.status_code == 200
    assert b'value="approve"' in page.content and b'value="reject"' in page.content
    response = client.post(f"/admin/workflows/workitem/{item.pk}/decide/",
                           {"decision": "approve", "comment": "via admin"})
    assert response.status_code == 302
    approval = Approval.objects.get(work_item=item)
    assert (approval.decided_by, approval.decided_via) == (cast.admin_a, "admin")
    # Decided: until a worker applies it, the page and "Why is my poll stuck?" offer no
    # second decision (it would be a 409) and say who decided.
    page = client.get(f"/admin/workflows/workitem/{item.pk}/change/").content.decode()
    assert 'value="approve"' not in page and 'value="reject"' not in page
    assert "Approved by admin_a" in page
    stuck = client.post("/admin/poll-stuck/", {"poll": json.dumps({"work_id": str(item.pk)})})
    assert "Approve or reject it" not in stuck.content.decode()
    assert "Approved by admin_a" in stuck.content.decode()


@pytest.mark.parametrize("decision, said", [
    ("approve", "Approved: the work item continues (its next step runs, or it completes)."),
    ("reject", "Rejected: the work item fails with code &#x27;rejected&#x27;"),
])
def test_admin_buttons_say_what_happens_next(cast, api, member_token, client, decision, said):
    """*Reject* said "Rejected; the work item continues." while the item fails."""
    intake = _setup(cast)
    item = _park(api, intake, member_token)
    client.force_login(cast.admin_a)
    page = client.post(f"/admin/workflows/workitem/{item.pk}/decide/",
                       {"decision": decision}, follow=True).content.decode()
    assert said in page, page
    assert "Rejected; the work item continues" not in page
