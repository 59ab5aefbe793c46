"""The work history's search box looks a whole correlation id up (a caller pastes the id it
sent): without an index it was a substring match over every item in reach, 0.5-0.8 s on a
200,000-item history (BENCHMARKS.md). Partial: only items that carry a correlation id are in
it, so a trigger without the header adds nothing to the index.

Built with CREATE INDEX CONCURRENTLY on PostgreSQL: a plain CREATE INDEX blocks inserts into
the work item table, every trigger, while it reads the whole table. If it fails half-way it
leaves an invalid index: `DROP INDEX CONCURRENTLY workitem_correlation`, then migrate again.
"""

from django.db import migrations, models

INDEX = models.Index(condition=~models.Q(correlation_id=""), fields=["correlation_id"],
                     name="workitem_correlation")


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

    dependencies = [("workflows", "0011_acronym_labels")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="workitem", index=INDEX)],
            database_operations=[migrations.RunPython(_create, _drop)],
        ),
    ]
