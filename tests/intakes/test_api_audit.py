"""Every state-changing endpoint of the public API is on the audit trail: its event, the key
that acted (lookup id and label), the key's organization, the caller's address and the
object, in the transaction of the change.

The test enumerates the API's routes: a route with a POST, PUT, PATCH or DELETE must have a
row in CASES (how to build its target and what event its success writes), or it fails.
"""

from __future__ import annotations

import json

import pytest
from django.urls import URLPattern
from django.utils import timezone

from apikeys.tokens import token_parse
from auxot.models import AuditLogEntry
from intakes import urls as api_urls
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow
from workflows.batch import work_item_process
from workflows.models import WorkItem
from workflows.services import work_item_create

WRITES = {"post", "put", "patch", "delete"}


def _intake(cast, steps):
    workflow = make_workflow(cast.org_a, steps, name="Audited flow")
    return intake_create(org=cast.org_a, workflow=workflow, name="Audited intake")


def _parked(cast):
    intake = _intake(cast, [("approval", {"instructions": "Sign"}), ("transform", {})])
    item = work_item_create(workflow=intake.workflow, input={}, intake=intake)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.waiting_on == WorkItem.Waiting.APPROVAL
    return intake, item


def _pending(cast):
    intake = _intake(cast, [("transform", {"expression": "input"})])
    return intake, work_item_create(workflow=intake.workflow, input={}, intake=intake)


def _failed(cast):
    intake, item = _pending(cast)
    WorkItem.objects.filter(pk=item.pk).update(
        status=WorkItem.Status.FAILED, finished_at=timezone.now(), next_run_at=None,
        error={"code": "boom", "message": "down", "step": "transform 1", "step_position": 1})
    return intake, item


def _trigger(cast):
    return _pending(cast)[0], None


# route name -> (build target: (intake, item or None), path suffix, body, event)
CASES = {
    "intake-trigger": (_trigger, "", {"n": 1}, "work_item.accepted"),
    "work-item-approval": (_parked, "/approval", {"decision": "approve"},
                           "work_item.approved"),
    "work-item-cancel": (_pending, "/cancel", {"reason": "not needed"}, "work_item.canceled"),
    "work-item-replay": (_failed, "/replay", {"reason": "fixed"}, "work_item.replayed"),
}


def _writing_routes() -> set[str]:
    found = set()
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view = getattr(pattern.callback, "view_class", None)
        methods = {m for m in (view.http_method_names if view else []) if hasattr(view, m)}
        if methods & WRITES:
            found.add(pattern.name)
    return found


def test_every_writing_route_has_a_case():
    assert _writing_routes() == set(CASES)


@pytest.mark.parametrize("route", sorted(CASES))
def test_each_write_is_audited_with_the_key_its_org_and_the_address(api, cast, member_token,
                                                                  route):
    build, suffix, body, event = CASES[route]
    intake, item = build(cast)
    path = f"/v1/intake/{intake.pk}" + (f"/work/{item.pk}{suffix}" if item else "")
    response = api.post(path, data=json.dumps(body), content_type="application/json",
                        REMOTE_ADDR="10.4.5.6", **bearer(member_token))
    assert response.status_code in (200, 201, 202), response.content[:300]
    target = item.pk if item else response.json()["work_id"]
    if route == "work-item-replay":
        target = item.pk  # the original names its replay; the replay is "created"
    rows = AuditLogEntry.objects.filter(event=event, object_id=str(target))
    [row] = rows
    assert row.org_id == cast.org_a.pk
    assert row.actor_key_lookup == token_parse(member_token).lookup_id
    assert row.actor_label and row.ip == "10.4.5.6"
