"""The audit log view (auxot.AuditLogEntry): here every AuditEvent; intakes' migrations
replace it with one that adds the accepted triggers read from their work items."""

from django.db import migrations, models

COLUMNS = ("id, org_id, created_at, event, actor_user_id, actor_key_lookup, actor_label, "
           "object_type, object_id, ip, extra")
CREATE = f"CREATE VIEW auxot_audit_log AS SELECT {COLUMNS} FROM auxot_auditevent"
DROP = "DROP VIEW IF EXISTS auxot_audit_log"


class Migration(migrations.Migration):

    dependencies = [
        ('auxot', '0004_org_secrets'),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditLogEntry',
            fields=[
                ('id', models.UUIDField(primary_key=True, serialize=False)),
                ('created_at', models.DateTimeField()),
                ('event', models.CharField(max_length=64)),
                ('actor_key_lookup', models.CharField(blank=True, max_length=32)),
                ('actor_label', models.CharField(blank=True, max_length=200)),
                ('object_type', models.CharField(blank=True, max_length=64)),
                ('object_id', models.CharField(blank=True, max_length=64)),
                ('ip', models.GenericIPAddressField(blank=True, null=True)),
                ('extra', models.JSONField(blank=True, default=dict)),
            ],
            options={
                'verbose_name': 'audit event',
                'verbose_name_plural': 'audit log',
                'db_table': 'auxot_audit_log',
                'ordering': ['-created_at'],
                'managed': False,
            },
        ),
        migrations.RunSQL(CREATE, DROP),
    ]
