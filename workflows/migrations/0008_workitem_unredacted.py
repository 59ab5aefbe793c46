"""Retention's redaction finds the finished items it has not redacted yet, per intake, oldest
first. Through workitem_intake_finished it walked every item it had already redacted (they
stay until deleted: 60 days by default) before the first one due, each run and each scope;
this index leaves them out (bench/retention_scale.py).

Built with CREATE INDEX CONCURRENTLY on PostgreSQL: a plain CREATE INDEX blocks inserts into
the work item table, every trigger, while it reads the whole table. If it fails half-way it
leaves an invalid index: `DROP INDEX CONCURRENTLY workitem_unredacted`, then migrate again.
"""

from django.db import migrations, models

INDEX = models.Index(
    condition=models.Q(("finished_at__isnull", False), ("redacted_at__isnull", True)),
    fields=["intake", "finished_at"], name="workitem_unredacted")


def _create(apps, schema_editor):
    model = apps.get_model("workflows", "WorkItem")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.add_index(model, INDEX, concurrently=True)
    else:
        schema_editor.add_index(model, INDEX)


def _drop(apps, schema_editor):
    model = apps.get_model("workflows", "WorkItem")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.remove_index(model, INDEX, concurrently=True)
    else:
        schema_editor.remove_index(model, INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("workflows", "0007_replay")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="workitem", index=INDEX)],
            database_operations=[migrations.RunPython(_create, _drop)],
        ),
    ]
