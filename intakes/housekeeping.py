"""Housekeeping on django-q2 schedules, run by the qcluster's scheduler.

- expired Idempotency-Key records (one batch a minute; the lookup of a conflicting key also
  deletes an expired record on the spot, so correctness never depends on the prune),
- finished rate-limit windows (every minute),
- `intake.rejected` audit rows past AUXOT_AUDIT_REJECTED_RETENTION_DAYS (hourly).

`housekeeping_schedules_ensure` runs after every `migrate` and creates a missing schedule,
found by name; an existing one is left as it is, so an operator may retune it in the admin
(Django Q → Scheduled tasks) and a later migrate keeps the change.
"""

from django.db import connections
from django_q.models import Schedule

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
        _, new = Schedule.objects.using(using).get_or_create(
            name=name, defaults={"func": func, "schedule_type": Schedule.MINUTES,
                                 "minutes": minutes, "repeats": -1})
        created += new
    return created
