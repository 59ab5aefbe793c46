# WorkItem.org: the workflow's org, copied so the fair claim can walk due items per org on
# one index (workflows/batch.py). Added nullable, filled from the workflows, then required.

import importlib

import django.db.models.deletion
from django.db import migrations, models

import workflows.models

# SQLite remakes the table to make the column required, which a view reading it forbids:
# the audit log view (SQLite's text, unchanged since) goes for the change and comes back.
view = importlib.import_module("intakes.migrations.0006_audit_log_accepted_triggers")


def view_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(view.DROP)


def view_create(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(view.SQLITE)


def backfill(apps, schema_editor):
    WorkItem = apps.get_model("workflows", "WorkItem")
    Workflow = apps.get_model("workflows", "Workflow")
    # One UPDATE for every item (a correlated subquery), not one per row.
    WorkItem.objects.filter(org__isnull=True).update(
        org_id=models.Subquery(Workflow.objects.filter(pk=models.OuterRef("workflow_id"))
                               .values("org_id")[:1]))


class Migration(migrations.Migration):

    dependencies = [
        ('auxot', '0007_acronym_labels'),
        ('intakes', '0014_acronym_labels'),
        ('workflows', '0014_steprun_retrying_codes'),
    ]

    operations = [
        migrations.AddField(
            model_name='workitem',
            name='org',
            field=workflows.models.WorkflowOrgField(
                db_index=False, editable=False, null=True,
                on_delete=django.db.models.deletion.PROTECT, related_name='+',
                to='auxot.organization', verbose_name='organization'),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunPython(view_drop, view_create),
        migrations.AlterField(
            model_name='workitem',
            name='org',
            field=workflows.models.WorkflowOrgField(
                db_index=False, editable=False,
                on_delete=django.db.models.deletion.PROTECT, related_name='+',
                to='auxot.organization', verbose_name='organization'),
        ),
        migrations.RunPython(view_create, view_drop),
        migrations.AddIndex(
            model_name='workitem',
            index=models.Index(condition=models.Q(('next_run_at__isnull', False)),
                               fields=['org', 'next_run_at'], name='workitem_org_due'),
        ),
    ]
