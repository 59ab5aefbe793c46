"""The accepted trigger in the audit log: read from its work item by the audit log view
(auxot.AuditLogEntry), shown by the admin list, the CSV export and the item's own trail."""

import csv
import io
from datetime import timedelta

import time_machine
from django.utils import timezone

from auxot.models import AuditEvent, AuditLogEntry
from auxot.services import audit_record
from intakes.retention import retention_run
from intakes.services import intake_update
from tests.conftest import trigger
from workflows.batch import work_item_process
from workflows.models import WorkItem

AUDIT = "/admin/auxot/auditevent/"


def _accept(api, intake, token, ip="198.51.100.7") -> WorkItem:
    response = trigger(api, intake.pk, token, REMOTE_ADDR=ip)
    assert response.status_code == 202
    return WorkItem.objects.select_related("created_by_key").get(pk=response.json()["work_id"])


def test_the_view_shows_each_accepted_trigger_once_without_an_audit_row(api, intake_a,
                                                                          member_token):
    items = [_accept(api, intake_a, member_token) for _ in range(2)]
    assert not AuditEvent.objects.filter(event="work_item.accepted").exists()
    entries = AuditLogEntry.objects.filter(event="work_item.accepted").order_by("created_at")
    assert [e.object_id for e in entries] == [str(item.pk) for item in items]
    entry, item = entries[0], items[0]
    assert (entry.created_at, entry.ip, entry.org_id) == (
        item.created_at, "198.51.100.7", intake_a.org_id)
    assert (entry.actor_label, entry.actor_key_lookup) == (
        "member key", item.created_by_key.lookup_id)


def test_an_item_with_its_own_accepted_row_shows_that_row_only(api, intake_a, member_token):
    """Items accepted before the view (or kept by retention) carry a real row."""
    item = _accept(api, intake_a, member_token)
    row = audit_record(event="work_item.accepted", org=intake_a.org, obj=item,
                       actor_label="member key", ip="198.51.100.7")
    assert list(AuditLogEntry.objects.filter(object_id=str(item.pk)).values_list(
        "pk", flat=True)) == [row.pk]


def test_the_admin_list_shows_accepted_triggers_to_their_org_only(client, api, cast, intake_a,
                                                                   member_token):
    item = _accept(api, intake_a, member_token)
    client.force_login(cast.auditor_a)
    page = client.get(AUDIT, {"event": "work_item.accepted"})
    assert page.status_code == 200
    html = page.content.decode()
    assert str(item.pk) in html and "member key" in html and "198.51.100.7" in html
    client.force_login(cast.outsider_b)  # admin of another organization
    assert str(item.pk) not in client.get(AUDIT).content.decode()


def test_the_admin_opens_an_accepted_trigger_entry(client, api, cast, intake_a, member_token):
    item = _accept(api, intake_a, member_token)
    client.force_login(cast.auditor_a)
    page = client.get(f"{AUDIT}{item.pk}/change/")
    assert page.status_code == 200
    assert "work_item.accepted" in page.content.decode()


def test_the_csv_export_has_the_accepted_trigger_with_key_and_ip(client, api, cast, intake_a,
                                                                  member_token):
    item = _accept(api, intake_a, member_token)
    client.force_login(cast.admin_a)
    response = client.get(f"{AUDIT}export.csv", {"event": "work_item.accepted"})
    raw = b"".join(response.streaming_content).decode("utf-8-sig")
    header, *rows = list(csv.reader(io.StringIO(raw)))
    [row] = [dict(zip(header, r, strict=True)) for r in rows]
    assert (row["object_id"], row["actor_label"], row["ip"], row["org"]) == (
        str(item.pk), "member key", "198.51.100.7", "Org A")
    assert row["actor_key_lookup"] == item.created_by_key.lookup_id
    assert item.created_by_key.display in row["extra"]


def test_the_work_item_admin_trail_lists_its_acceptance(client, api, cast, intake_a,
                                                        member_token):
    item = _accept(api, intake_a, member_token)
    client.force_login(cast.admin_a)
    page = client.get(f"/admin/workflows/workitem/{item.pk}/change/")
    assert page.status_code == 200
    assert "work_item.accepted" in page.content.decode()


def test_retention_keeps_the_acceptance_as_a_row_when_it_deletes_the_item(api, cast,
                                                                          intake_a,
                                                                          member_token):
    intake_update(intake=intake_a, changes={"item_retention_days": 1})
    intake_a.workflow.steps.filter(kind="delay").delete()
    item = _accept(api, intake_a, member_token)
    work_item_process(work_id=item.pk, drain_seconds=0)
    assert WorkItem.objects.get(pk=item.pk).status == "completed"
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        assert retention_run().deleted == 1
    assert not WorkItem.objects.filter(pk=item.pk).exists()
    row = AuditEvent.objects.get(event="work_item.accepted")
    assert (row.object_id, row.actor_label, row.ip, row.org_id) == (
        str(item.pk), "member key", "198.51.100.7", cast.org_a.pk)
    assert row.created_at == item.created_at


def test_retention_adds_no_second_row_for_an_acceptance_that_has_its_own(api, cast, intake_a,
                                                                        member_token):
    """An item accepted before the view (or kept by an earlier pass) carries a real row: the
    item's deletion keeps that row and copies nothing (a copy of it was a second acceptance
    in the log)."""
    intake_update(intake=intake_a, changes={"item_retention_days": 1})
    intake_a.workflow.steps.filter(kind="delay").delete()
    item = _accept(api, intake_a, member_token)
    work_item_process(work_id=item.pk, drain_seconds=0)
    row = audit_record(event="work_item.accepted", org=intake_a.org, obj=item,
                       actor_label="member key", ip="198.51.100.7")
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        assert retention_run().deleted == 1
    assert list(AuditEvent.objects.filter(event="work_item.accepted").values_list(
        "pk", flat=True)) == [row.pk]


def test_retention_reads_the_acceptances_it_keeps_by_the_items_ids(api, intake_a,
                                                                   member_token):
    """The view's id of a derived entry is its item's id, which the work items' primary key
    serves; its object_id is that id as text, which no index serves: on PostgreSQL every
    delete batch read the whole work item table (bench/retention_scale.py)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    intake_update(intake=intake_a, changes={"item_retention_days": 1})
    intake_a.workflow.steps.filter(kind="delay").delete()
    item = _accept(api, intake_a, member_token)
    work_item_process(work_id=item.pk, drain_seconds=0)
    with (time_machine.travel(timezone.now() + timedelta(days=2)),
          CaptureQueriesContext(connection) as captured):
        assert retention_run().deleted == 1
    reads = [q["sql"] for q in captured.captured_queries if 'FROM "auxot_audit_log"' in q["sql"]]
    assert reads and all('"auxot_audit_log"."id" IN' in sql and "ORDER BY" not in sql
                         for sql in reads)
    assert AuditEvent.objects.get(event="work_item.accepted").object_id == str(item.pk)
