"""Housekeeping on django-q2 schedules, run by the qcluster's scheduler.

- expired Idempotency-Key records (one batch a minute; the lookup of a conflicting key also
  deletes an expired record on the spot, so correctness never depends on the prune),
- finished rate-limit windows (every minute),
- `intake.rejected` audit rows past AUXOT_AUDIT_REJECTED_RETENTION_DAYS (hourly).

`housekeeping_schedules_ensure` runs after every `migrate` and creates a missing schedule,
found by name; an existing one is left as it is, so an operator may retune it in the admin
(Django Q → Scheduled tasks) and a later migrate keeps the change.
"""

from django.db import connections, transaction
from django_q.models import Schedule

# Serializes schedule changes across processes on PostgreSQL (two hosts' `migrate` at once).
_SCHEDULES_LOCK = 0x61757873  # "auxs"

# name -> (dotted task, every N minutes)
SCHEDULES: dict[str, tuple[str, int]] = {
    "auxot: prune expired idempotency keys": ("intakes.tasks.idempotency_prune_run", 1),
    "auxot: prune finished rate-limit windows": ("intakes.tasks.ratelimit_prune_run", 1),
    "auxot: prune expired rejected-request audit rows": (
        "intakes.tasks.audit_rejected_prune_run", 60),
}


def housekeeping_schedules_ensure(*, using: str = "default", **kwargs) -> int:
    """Create the SCHEDULES that do not exist yet; returns how many were created."""
    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return 0  # django_q is not migrated on this database (yet)
    created = 0
    for name, (func, minutes) in SCHEDULES.items():
        created += schedule_ensure(name=name, using=using, wanted={
            "func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes,
            "repeats": -1})
    return created


def schedule_ensure(*, name: str, wanted: dict, using: str = "default",
                    correct: bool = False, **create) -> bool:
    """Make sure exactly one schedule is named `name`: create it when missing (`wanted` and
    `create` fields), set `wanted` on it when `correct`. True when something changed.

    The name is not unique in django-q2's table, and two `migrate`s at once (two hosts'
    releases) each found none and each created one; every later `migrate` then failed
    (MultipleObjectsReturned). The check and the write are serialized (an advisory lock on
    PostgreSQL; SQLite takes its write lock when the transaction begins), and duplicates
    left by that are removed, the oldest kept."""
    with transaction.atomic(using=using):
        connection = connections[using]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEDULES_LOCK])
        rows = Schedule.objects.using(using).filter(name=name).order_by("pk")
        found = list(rows[:1])
        if found:
            rows.exclude(pk=found[0].pk).delete()
            if correct and any(getattr(found[0], k) != v for k, v in wanted.items()):
                rows.filter(pk=found[0].pk).update(**wanted)
                return True
            return False
        Schedule.objects.using(using).create(name=name, **wanted, **create)
        return True
