"""The audit log is append-only; rejected-request rows expire after the retention."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from auxot import audit
from auxot.models import AuditEvent, AuditLogEntry
from auxot.services import audit_record
from workflows.models import WorkItem


def _row(event: str, age_days: float, org=None) -> AuditEvent:
    return audit_record(event=event, org=org, now=timezone.now() - timedelta(days=age_days),
                        extra={"reason": "test"})


def test_prune_deletes_only_old_rejected_rows_and_audits_itself(db, settings):
    settings.AUXOT_AUDIT_REJECTED_RETENTION_DAYS = 30
    old = _row("intake.rejected", 31)
    young = _row("intake.rejected", 29)
    kept = _row("intake.created", 400)
    assert audit.audit_rejected_prune(now=timezone.now()) == 1
    remaining = set(AuditEvent.objects.values_list("pk", flat=True))
    assert old.pk not in remaining and {young.pk, kept.pk} <= remaining
    pruned = AuditEvent.objects.get(event="audit.pruned")
    assert pruned.extra["deleted"] == 1 and pruned.extra["retention_days"] == 30


def test_database_trigger_guards_the_log_on_postgresql(db):
    row = _row("intake.created", 1)
    if connection.vendor != "postgresql":
        # SQLite (the demo database) has no trigger: a raw UPDATE goes through there, which
        # is why the admin and the services are the guard (next tests) on every database.
        with connection.cursor() as cursor:
            cursor.execute("UPDATE auxot_auditevent SET event = 'x' WHERE id = %s", [row.pk.hex])
        row.refresh_from_db()
        assert row.event == "x"
        return
    for statement in ("UPDATE auxot_auditevent SET event = 'x' WHERE id = %s",
                      "DELETE FROM auxot_auditevent WHERE id = %s"):
        with (pytest.raises(DatabaseError, match="append-only"), transaction.atomic(),
              connection.cursor() as cursor):
            cursor.execute(statement, [row.pk])
    rejected = _row("intake.rejected", 400)
    # Even an old rejected row needs the prune's transaction-local flag.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=rejected.pk).delete()
    assert AuditEvent.objects.filter(pk__in=[row.pk, rejected.pk]).count() == 2
    assert audit.audit_rejected_prune(now=timezone.now()) == 1
    # The flag is transaction-local: gone after the prune's transaction.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        _row("intake.rejected", 400).delete()


def test_deleting_a_user_keeps_their_audit_rows_with_a_null_actor(db):
    user = get_user_model().objects.create_user("gone")
    row = audit_record(event="intake.created", org=None, actor_user=user)
    user.delete()
    row.refresh_from_db()
    assert row.actor_user_id is None and row.actor_label == "gone"


def test_no_admin_page_edits_or_deletes_audit_rows(client, cast):
    """On every database: no admin page (superusers included) updates or deletes audit
    rows; the prune deletes only expired rejected rows (tested above)."""
    row = _row("intake.created", 1, org=cast.org_a)
    client.force_login(cast.admin_a)
    base = "/admin/auxot/auditevent/"
    assert client.post(f"{base}{row.pk}/change/", {"event": "x"}).status_code == 403
    assert client.post(f"{base}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(base, {"action": "delete_selected", "_selected_action": [str(row.pk)],
                       "post": "yes"})
    row.refresh_from_db()
    assert row.event == "intake.created"
    client.force_login(get_user_model().objects.create_superuser("root", "r@x.io", "pw"))
    assert client.post(f"{base}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=row.pk).exists()


def test_accepted_work_is_audited_with_key_label_and_ip_and_no_body(api, cast, intake_a,
                                                                    member_token):
    from tests.conftest import trigger

    response = trigger(api, intake_a.pk, member_token, body={"secret_field": "s3cr3t"},
                       REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 202
    # Read from the work item by the audit log view, not a second row written per trigger.
    assert not AuditEvent.objects.filter(event="work_item.accepted").exists()
    event = AuditLogEntry.objects.get(event="work_item.accepted")
    assert event.object_id == response.json()["work_id"]
    assert event.object_type == "workflows.workitem"
    assert (event.actor_label, event.ip) == ("member key", "203.0.113.9")
    assert event.org_id == cast.org_a.pk
    key = WorkItem.objects.get(pk=event.object_id).created_by_key
    assert event.actor_key_lookup == key.lookup_id
    assert event.extra == {"intake": str(intake_a.pk), "key": key.display}
    assert "s3cr3t" not in str(event.extra) and member_token not in str(event.extra)


def test_audit_row_links_to_its_objects_admin_page_only_when_there_is_one(cast, intake_a):
    from django.contrib import admin

    from auxot.admin import AuditEventAdmin

    page = AuditEventAdmin(AuditEvent, admin.site)
    linked = audit_record(event="intake.changed", org=cast.org_a, obj=intake_a)
    assert f'href="/admin/intakes/intake/{intake_a.pk}/change/"' in page.object_link(linked)
    unregistered = audit_record(event="x", org=cast.org_a, obj=cast.org_a.memberships.first())
    unregistered.object_type = "auth.permission"
    shown = page.object_link(unregistered)
    # No page to link to: the text, and the link to the events about it (this list).
    assert shown.startswith(f'auth.permission {unregistered.object_id} <a href="?object_type=')
    assert "/admin/" not in shown
    gone = audit_record(event="x", org=cast.org_a)
    gone.object_type, gone.object_id = "nosuchapp.model", "1"
    assert page.object_link(gone).startswith("nosuchapp.model 1 <a href=\"?")
    assert "/admin/" not in page.object_link(gone)


# --- At scale: the log is a view over the audit table and every accepted trigger's item ---

def _view_queries(captured) -> list[str]:
    return [q["sql"] for q in captured if "auxot_audit_log" in q["sql"]]


def test_the_audit_list_reads_the_view_for_its_page_and_its_count_only(client, cast, api,
                                                                        intake_a,
                                                                        member_token):
    """Each DISTINCT or COUNT over the view reads every work item of the organizations in
    reach (4 s a page at 352,000 items): the page ran 8 (two counts, the date hierarchy,
    a DISTINCT per filter). Now the page and its count; the filters' choices come from
    the audit table and what the apps' rows carry, and actors are searched, not listed."""
    from django.test.utils import CaptureQueriesContext

    from tests.conftest import trigger

    assert trigger(api, intake_a.pk, member_token).status_code == 202
    audit_record(event="key.note", org=cast.org_a, actor_label="someone")
    audit_record(event="other.org.only", org=cast.org_b, actor_label="b")
    client.force_login(cast.auditor_a)
    for query in ({}, {"event__exact": "key.note"}, {"q": "someone"}):
        with CaptureQueriesContext(connection) as captured:
            page = client.get("/admin/auxot/auditevent/", query)
        assert page.status_code == 200
        assert len(_view_queries(captured.captured_queries)) <= 2, query
    page = client.get("/admin/auxot/auditevent/")
    choices = {spec.title: [c["display"] for c in spec.choices(page.context["cl"])]
               for spec in page.context["cl"].filter_specs}
    assert {"work_item.accepted", "key.note"} <= set(choices["event"])
    assert "other.org.only" not in choices["event"]  # another organization's, not listed
    assert "workflows.workitem" in choices["object type"]
    assert "actor label" not in choices
    assert page.context["cl"].result_count == AuditLogEntry.objects.filter(
        org=cast.org_a).count()


def test_a_work_items_trail_reads_no_work_item_but_its_own(client, cast, api, intake_a,
                                                             member_token):
    """The trail filtered the view on `object_id`, which its derived rows compute from each
    work item (`id::text`): every item of every organization was read on each item page."""
    from django.test.utils import CaptureQueriesContext

    from tests.conftest import trigger
    from workflows.services import work_item_cancel

    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    work_item_cancel(item=WorkItem.objects.get(pk=work_id), user=cast.admin_a)
    client.force_login(cast.auditor_a)
    with CaptureQueriesContext(connection) as captured:
        page = client.get(f"/admin/workflows/workitem/{work_id}/change/")
    trail = page.content.decode().split("field-audit_trail")[1].split("</ul>")[0]
    assert trail.index("work_item.accepted") < trail.index("work_item.canceled")
    views = _view_queries(captured.captured_queries)
    assert views and all("object_id" not in sql.split("WHERE", 1)[1] for sql in views)


def test_the_audit_lists_count_stops_past_its_cap(client, cast, monkeypatch):
    """The exact count of a filtered log read a large tenant's whole history (0.35-0.45 s
    at 200,000 items, bench/admin_scale.py) on every page: it counts at most cap + 1 rows
    and says "more than" past it. Under the cap the count is exact."""
    from django.test.utils import CaptureQueriesContext

    from auxot.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 3)
    for n in range(3):
        audit_record(event="key.note", org=cast.org_a, actor_label=f"n{n}")
    client.force_login(cast.auditor_a)
    page = client.get("/admin/auxot/auditevent/", {"event__exact": "key.note"})
    assert '<span id="result-count">3 audit events</span>' in page.content.decode()
    audit_record(event="key.note", org=cast.org_a, actor_label="n3")
    with CaptureQueriesContext(connection) as captured:
        page = client.get("/admin/auxot/auditevent/", {"event__exact": "key.note"})
    assert "more than 3 audit events" in page.content.decode()
    [count] = [sql for sql in _view_queries(captured.captured_queries) if "COUNT(" in sql]
    assert "LIMIT 4" in count


def test_searching_the_audit_log_for_an_id_reads_the_indexes(client, cast, api, intake_a,
                                                            member_token):
    """A work item's id searched as a substring of four columns of the view read every work
    item of the organizations in reach; an id is looked up exactly: its derived row and the
    audit rows about it, and nothing else matches."""
    from django.test.utils import CaptureQueriesContext

    from tests.conftest import trigger
    from workflows.services import work_item_cancel

    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    other = trigger(api, intake_a.pk, member_token).json()["work_id"]
    work_item_cancel(item=WorkItem.objects.get(pk=work_id), user=cast.admin_a)
    client.force_login(cast.auditor_a)
    with CaptureQueriesContext(connection) as captured:
        page = client.get("/admin/auxot/auditevent/", {"q": f" {work_id.upper()} "})
    rows = list(page.context["cl"].result_list)
    assert sorted(row.event for row in rows) == ["work_item.accepted", "work_item.canceled"]
    assert all(row.object_id == work_id for row in rows) and other not in page.content.decode()
    assert not any("LIKE" in sql.upper() for sql in _view_queries(captured.captured_queries))
    words = client.get("/admin/auxot/auditevent/", {"q": "work_item.cancel"})
    assert [row.event for row in words.context["cl"].result_list] == ["work_item.canceled"]


def test_a_page_past_the_capped_count_still_opens(client, cast, monkeypatch):
    """Past the cap, the page count is unknown: a deep page is its rows, not an error."""
    from auxot.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 2)
    monkeypatch.setattr("auxot.admin.AuditEventAdmin.list_per_page", 1)
    for n in range(6):
        audit_record(event="key.note", org=cast.org_a, actor_label=f"n{n}",
                     now=timezone.now() - timedelta(minutes=n))
    client.force_login(cast.auditor_a)
    deep = client.get("/admin/auxot/auditevent/", {"event__exact": "key.note", "p": "5"})
    assert [row.actor_label for row in deep.context["cl"].result_list] == ["n4"]
    beyond = client.get("/admin/auxot/auditevent/", {"event__exact": "key.note", "p": "9"})
    assert beyond.status_code == 200 and list(beyond.context["cl"].result_list) == []
    for bad in ("0", "x"):
        refused = client.get("/admin/auxot/auditevent/", {"event__exact": "key.note", "p": bad})
        assert refused.status_code in (200, 302)  # as Django answers a bad page number


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's views have no types")
def test_the_views_columns_have_the_audit_tables_types(db):
    """The derived half typed actor_user_id as bigint against the table's integer: the
    planner could not take the admin list's organization and order through the audit
    table's (org, -created_at) index, and read and sorted the whole table per page."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT v.column_name, v.data_type, t.data_type "
            "FROM information_schema.columns v JOIN information_schema.columns t "
            "ON t.column_name = v.column_name AND t.table_name = 'auxot_auditevent' "
            "WHERE v.table_name = 'auxot_audit_log'")
        columns = cursor.fetchall()
    assert len(columns) == 11
    assert [c for c in columns if c[1] != c[2]] == []


def test_an_id_searched_reads_no_more_rows_about_it_than_the_list_counts(client, cast,
                                                                         intake_a, monkeypatch):
    """An intake's id can name thousands of rows (its rejections): the exact search takes the
    newest ones up to the count's cap, and the list says "more than" past it."""
    from auxot.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 2)
    for n in range(4):
        audit_record(event="intake.rejected", org=cast.org_a, obj=intake_a,
                     actor_label=f"r{n}", now=timezone.now() - timedelta(minutes=n))
    client.force_login(cast.auditor_a)
    page = client.get("/admin/auxot/auditevent/", {"q": str(intake_a.pk)})
    rows = list(page.context["cl"].result_list)  # 5 about it: intake.created and r0-r3
    assert [row.actor_label for row in rows] == ["r0", "admin_a", "r1"]
    assert "more than 2 audit events" in page.content.decode()


def test_every_audit_event_the_code_writes_is_named_in_the_readme():
    """Admins filter the audit log by event name: `intake.created`, `intake.deactivated`,
    the signing-secret and callback on/off events were written but named nowhere. Every
    literal event an audit call writes (`event=`, either branch of a conditional one, or a
    helper's first argument) is in the README, backquoted."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()

    def literals(node):
        if isinstance(node, ast.IfExp):
            return literals(node.body) | literals(node.orelse)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        return set()

    written = set()
    for app in ("auxot", "intakes", "workflows", "apikeys"):
        for path in (root / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if "audit" not in name:
                    continue
                for keyword in node.keywords:
                    if keyword.arg == "event":
                        written |= literals(keyword.value)
                if node.args:
                    written |= {value for value in literals(node.args[0]) if "." in value}
    assert {"intake.deactivated", "secret.rotated", "intake.signing_secret_rotated"} <= written
    assert sorted(event for event in written if f"`{event}`" not in readme) == []
