"""Every time an admin page shows says its zone: the audit log and the work history are read
by people in other zones than the server's, and "Dec. 2, 2026, 6:29 p.m." is a guess."""

import re
from datetime import UTC, datetime

from django.contrib import admin
from django.contrib.admin.utils import display_for_field
from django.db import models

from auxot.models import AuditEvent
from auxot.services import audit_record

WHEN = datetime(2026, 12, 2, 18, 29, 10, tzinfo=UTC)
SHOWN = "2026-12-02 18:29:10 UTC"


def test_every_time_column_of_every_admin_list_shows_its_zone(db):
    columns = 0
    for model, model_admin in admin.site._registry.items():
        fields = {field.name: field for field in model._meta.fields}
        for name in model_admin.list_display:
            field = fields.get(name) if isinstance(name, str) else None  # None: a method
            if isinstance(field, models.DateTimeField):
                columns += 1
                assert display_for_field(WHEN, field, "-") == SHOWN, (model, name)
    assert columns >= 5  # the audit log's, work items', keys', intakes'...


def test_the_audit_list_its_row_and_an_items_trail_show_utc(client, cast, api, intake_a,
                                                             member_token):
    from tests.conftest import trigger

    work_id = trigger(api, intake_a.pk, member_token, {"customer": "x"}).json()["work_id"]
    row = audit_record(event="test.marker", org=cast.org_a, actor_label="marker",
                       now=WHEN)
    client.force_login(cast.auditor_a)
    listing = client.get("/admin/auxot/auditevent/").content.decode()
    assert SHOWN in listing
    page = client.get(f"/admin/auxot/auditevent/{row.pk}/change/").content.decode()
    assert SHOWN in page
    item = client.get(f"/admin/workflows/workitem/{work_id}/change/").content.decode()
    assert re.search(r"<li>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC <strong>work_item.accepted",
                     item)
    assert AuditEvent.objects.filter(pk=row.pk).exists()
