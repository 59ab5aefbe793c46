"""Dotted entry points for django-q2. Arguments are ids only; all state is in the database."""

from intakes.callbacks import callback_delivery_process


def callback_delivery_run(delivery_id: str) -> str | None:
    return callback_delivery_process(delivery_id=delivery_id)


def retention_run() -> str:
    from intakes.retention import retention_run as run

    report = run()
    return f"redacted {report.redacted}, deleted {report.deleted}"
