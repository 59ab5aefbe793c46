"""Callback URLs show only a plain first path segment now (chat services put their tokens
in the path): rows written before carry path tokens in an attempt's URL, error and stored
answer, in a delivery's last error and in an intake's "410 Gone from <URL>". Redact them as
new rows are. (The audit trail is append-only and keeps what it recorded.)"""

from django.db import migrations

BATCH = 500


def _scrub(text: str, hidden: tuple[str, ...]) -> str:
    for part in hidden:
        text = text.replace(part, "REDACTED")
    return text


def redact_paths(apps, schema_editor):
    # The product's own redaction, as the rows written from now on get it.
    from auxot.outbound import url_hidden_parts, url_redact

    Attempt = apps.get_model("intakes", "CallbackAttempt")
    Delivery = apps.get_model("intakes", "CallbackDelivery")
    changed = []
    rows = Attempt.objects.values_list("pk", "url", "error", "response_body", "delivery__url")
    for pk, url, error, body, delivery_url in rows.iterator(chunk_size=2000):
        parts = url_hidden_parts(delivery_url)
        new = (url_redact(url), _scrub(error, parts), _scrub(body, parts))
        if new != (url, error, body):
            changed.append(Attempt(pk=pk, url=new[0], error=new[1], response_body=new[2]))
        if len(changed) >= BATCH:
            Attempt.objects.bulk_update(changed, ["url", "error", "response_body"])
            changed = []
    Attempt.objects.bulk_update(changed, ["url", "error", "response_body"])

    changed = []
    rows = Delivery.objects.exclude(last_error="").values_list("pk", "url", "last_error")
    for pk, url, error in rows.iterator(chunk_size=2000):
        new = _scrub(error, url_hidden_parts(url))
        if new != error:
            changed.append(Delivery(pk=pk, last_error=new))
        if len(changed) >= BATCH:
            Delivery.objects.bulk_update(changed, ["last_error"])
            changed = []
    Delivery.objects.bulk_update(changed, ["last_error"])

    Intake = apps.get_model("intakes", "Intake")
    gone = "410 Gone from "
    for intake in Intake.objects.filter(callback_disabled_reason__startswith=gone):
        reason = gone + url_redact(intake.callback_disabled_reason[len(gone):])
        if reason != intake.callback_disabled_reason:
            Intake.objects.filter(pk=intake.pk).update(callback_disabled_reason=reason)


class Migration(migrations.Migration):
    dependencies = [("intakes", "0007_callback_endpoints")]

    operations = [migrations.RunPython(redact_paths, migrations.RunPython.noop, elidable=True)]
