"""Attempt rows stored with the error code 'retrying' get the code the current version stores.

Before attempts kept their own code (RetryCodes), an attempt whose backoff ran out was
stored failed with {"code": "retrying"}: a status word that says nothing of what failed. The
current version stores the code the kind's retry kept in the wait's detail, else the kind's
attempt code (workflows.kinds.base.retried_error): `http_unavailable` for an http step,
`provider_unavailable` for an agent step, `step_error` for any other kind. The message (the
reason) stays. The reverse leaves the codes as they are (the older version reads them as a
failed attempt like any other).
"""

from django.db import migrations

# The kinds' RetryCodes.attempt when this was written, frozen here (a migration must not
# follow later code); tests check them against the registry.
ATTEMPT_CODES = {"http": "http_unavailable", "agent": "provider_unavailable"}
FALLBACK_CODE = "step_error"  # a kind that does not retry (retried_error without codes)
BATCH = 500


def code_for(kind: str, state: dict | None) -> str:
    kept = (state or {}).get("code")
    if isinstance(kept, str) and kept and kept != "retrying":
        return kept
    return ATTEMPT_CODES.get(kind, FALLBACK_CODE)


def retrying_codes_migrate(apps, schema_editor):
    step_run = apps.get_model("workflows", "StepRun")
    rows = (step_run.objects.filter(error__code="retrying").select_related("step")
            .only("pk", "error", "state", "step__kind").order_by("pk"))
    changed = []
    for row in rows.iterator(chunk_size=BATCH):
        row.error = {**row.error, "code": code_for(row.step.kind, row.state)}
        changed.append(row)
        if len(changed) >= BATCH:
            step_run.objects.bulk_update(changed, ["error"])
            changed = []
    if changed:
        step_run.objects.bulk_update(changed, ["error"])


class Migration(migrations.Migration):

    dependencies = [
        ('workflows', '0013_providerticket_lease_index'),
    ]

    operations = [
        migrations.RunPython(retrying_codes_migrate, migrations.RunPython.noop),
    ]
