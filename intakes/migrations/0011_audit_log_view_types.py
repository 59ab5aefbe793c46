"""The audit log view's second half typed actor_user_id as bigint against the audit table's
integer column: PostgreSQL then could not push the organization filter and the ordering of
the admin's list into the audit table's (org, -created_at) index (a page read and sorted
the whole table; bench/admin_scale.py). Same view, the column typed as the table's. SQLite's
view has no types: unchanged there."""

import importlib

from django.db import migrations

previous = importlib.import_module("intakes.migrations.0006_audit_log_accepted_triggers")

POSTGRESQL = previous.POSTGRESQL.replace(
    f"{previous.ACCEPTED}::varchar(64), NULL::bigint,",
    f"{previous.ACCEPTED}::varchar(64), NULL::integer,")
assert POSTGRESQL != previous.POSTGRESQL


class Migration(migrations.Migration):
    dependencies = [("intakes", "0010_callback_url_label")]

    operations = [migrations.RunPython(previous._replace(POSTGRESQL, previous.SQLITE),
                                       previous._replace(previous.POSTGRESQL, previous.SQLITE))]
