"""The audit log view (auxot.AuditLogEntry) gains every accepted trigger, read from its work
item, instead of the trigger writing a second row: event `work_item.accepted`, the key's
label and lookup id, the caller's IP, the time and the intake's organization, with
{"intake", "key"} as before. A trigger's item is one with an intake that is not a replay.

An item that already has a `work_item.accepted` audit row (accepted before this view, or
kept by retention before the item was deleted) shows that row only.
"""

from django.db import migrations

BASE_COLUMNS = ("id, org_id, created_at, event, actor_user_id, actor_key_lookup, "
                "actor_label, object_type, object_id, ip, extra")
ACCEPTED = "'work_item.accepted'"

POSTGRESQL = f"""
CREATE VIEW auxot_audit_log AS
SELECT {BASE_COLUMNS} FROM auxot_auditevent
UNION ALL
SELECT wi.id, i.org_id, wi.created_at, {ACCEPTED}::varchar(64), NULL::bigint,
       coalesce(k.lookup_id, '')::varchar(32), coalesce(k.label, '')::varchar(200),
       'workflows.workitem'::varchar(64), wi.id::text::varchar(64), wi.created_by_ip,
       jsonb_build_object('intake', wi.intake_id::text,
                          'key', k.kind || '.' || k.lookup_id || '.…' || k.last_four)
FROM workflows_workitem wi
JOIN intakes_intake i ON i.id = wi.intake_id
LEFT JOIN apikeys_apikey k ON k.id = wi.created_by_key_id
WHERE wi.replay_of_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM auxot_auditevent a
                  WHERE a.object_id = wi.id::text AND a.event = {ACCEPTED})
"""


def _dashed(column: str) -> str:
    """SQLite stores a UUID as 32 hex digits; the audit log shows str(uuid)."""
    return " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length in
                              ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))


SQLITE = f"""
CREATE VIEW auxot_audit_log AS
SELECT {BASE_COLUMNS} FROM auxot_auditevent
UNION ALL
SELECT wi.id, i.org_id, wi.created_at, {ACCEPTED}, NULL,
       coalesce(k.lookup_id, ''), coalesce(k.label, ''), 'workflows.workitem',
       {_dashed("wi.id")}, wi.created_by_ip,
       json_object('intake', {_dashed("wi.intake_id")},
                   'key', k.kind || '.' || k.lookup_id || '.…' || k.last_four)
FROM workflows_workitem wi
JOIN intakes_intake i ON i.id = wi.intake_id
LEFT JOIN apikeys_apikey k ON k.id = wi.created_by_key_id
WHERE wi.replay_of_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM auxot_auditevent a
                  WHERE a.object_id = {_dashed("wi.id")} AND a.event = {ACCEPTED})
"""

BASE = f"CREATE VIEW auxot_audit_log AS SELECT {BASE_COLUMNS} FROM auxot_auditevent"
DROP = "DROP VIEW IF EXISTS auxot_audit_log"


def _replace(postgresql: str, sqlite: str):
    def run(apps, schema_editor):
        schema_editor.execute(DROP)
        vendor = schema_editor.connection.vendor
        schema_editor.execute(postgresql if vendor == "postgresql" else sqlite)
    return run


class Migration(migrations.Migration):
    dependencies = [
        ("intakes", "0005_intake_retention"),
        ("auxot", "0005_audit_log_view"),
        ("workflows", "0007_replay"),
        ("apikeys", "0001_initial"),
    ]

    operations = [migrations.RunPython(_replace(POSTGRESQL, SQLITE), _replace(BASE, BASE))]
