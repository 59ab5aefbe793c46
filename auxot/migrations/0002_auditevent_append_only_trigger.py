"""PostgreSQL refuses UPDATE and DELETE on auxot_auditevent (append-only), except:

- DELETE of `intake.rejected%` rows when the prune service set the transaction-local
  `auxot.audit_prune = 'on'` (auxot.audit.audit_rejected_prune), and
- the UPDATE of ON DELETE SET NULL when a user is deleted (only actor_user_id changes).

SQLite has no such trigger: there the admin and the services are the protection.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION auxot_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.event LIKE 'intake.rejected%%'
            AND coalesce(current_setting('auxot.audit_prune', true), '') = 'on' THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.actor_user_id IS NOT NULL AND NEW.actor_user_id IS NULL THEN
        NEW.actor_user_id := OLD.actor_user_id;
        IF NEW IS NOT DISTINCT FROM OLD THEN
            NEW.actor_user_id := NULL;
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'auxot_auditevent is append-only: %% refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS auxot_auditevent_append_only ON auxot_auditevent;
CREATE TRIGGER auxot_auditevent_append_only BEFORE UPDATE OR DELETE ON auxot_auditevent
    FOR EACH ROW EXECUTE FUNCTION auxot_auditevent_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS auxot_auditevent_append_only ON auxot_auditevent;
DROP FUNCTION IF EXISTS auxot_auditevent_append_only();
"""


def _run(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)
    return run


class Migration(migrations.Migration):
    dependencies = [("auxot", "0001_initial")]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP), elidable=False)]
