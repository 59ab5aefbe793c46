"""Prunes run on django-q2 schedules created by migrate, not on the ticker."""

import pydoc
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from auxot.models import AuditEvent
from auxot.services import audit_record
from intakes import tasks
from intakes.housekeeping import SCHEDULES
from intakes.models import IdempotencyKey, RateLimitBucket
from tests.conftest import trigger


def _schedules() -> dict[str, list[Schedule]]:
    found: dict[str, list[Schedule]] = {}
    for schedule in Schedule.objects.filter(name__in=SCHEDULES):
        found.setdefault(schedule.name, []).append(schedule)
    return found


def test_migrate_creates_each_schedule_once(db):
    call_command("migrate", verbosity=0)  # a second migrate: still one of each
    found = _schedules()
    assert sorted(found) == sorted(SCHEDULES)
    for name, (func, minutes) in SCHEDULES.items():
        (schedule,) = found[name]
        assert (schedule.func, schedule.schedule_type, schedule.minutes) == (
            func, Schedule.MINUTES, minutes)
        assert schedule.repeats < 0  # forever
        assert callable(pydoc.locate(schedule.func)), schedule.func


def test_migrate_keeps_an_operators_retuned_schedule(db):
    name = "auxot: prune finished rate-limit windows"
    Schedule.objects.filter(name=name).update(minutes=15)
    call_command("migrate", verbosity=0)
    assert list(Schedule.objects.filter(name=name).values_list("minutes", flat=True)) == [15]


def test_migrate_recreates_a_deleted_schedule(db):
    Schedule.objects.filter(name__in=SCHEDULES).delete()
    call_command("migrate", verbosity=0)
    assert sorted(_schedules()) == sorted(SCHEDULES)


def test_migrate_mends_schedules_two_releases_doubled(db):
    """Two `migrate`s at once each found no schedule and each made one; the name is not
    unique, and every later migrate then failed (MultipleObjectsReturned)."""
    from intakes.retention import SCHEDULE_NAME

    for name in [*SCHEDULES, SCHEDULE_NAME]:
        first = Schedule.objects.get(name=name)
        for _ in range(2):
            Schedule.objects.create(name=name, func=first.func, schedule_type=Schedule.MINUTES,
                                    minutes=first.minutes, repeats=-1)
    call_command("migrate", verbosity=0)
    for name in [*SCHEDULES, SCHEDULE_NAME]:
        assert Schedule.objects.filter(name=name).count() == 1, name


@pytest.mark.django_db(transaction=True)
def test_schedules_ensured_from_several_processes_at_once_stay_single():
    """What each host's `migrate` runs after migrating, four at once from a clean table."""
    import threading

    from django.db import connections

    from intakes.housekeeping import housekeeping_schedules_ensure
    from intakes.retention import SCHEDULE_NAME, retention_schedule_ensure

    Schedule.objects.all().delete()
    start, errors = threading.Barrier(4), []

    def release() -> None:
        try:
            start.wait(10)
            housekeeping_schedules_ensure()
            retention_schedule_ensure()
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=release) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for name in [*SCHEDULES, SCHEDULE_NAME]:
        assert Schedule.objects.filter(name=name).count() == 1, name


def test_idempotency_task_prunes_expired_records(api, intake_a, member_token, settings):
    trigger(api, intake_a.pk, member_token, HTTP_IDEMPOTENCY_KEY="k1")
    assert tasks.idempotency_prune_run() == 0
    later = timezone.now() + timedelta(hours=settings.AUXOT_IDEMPOTENCY_TTL_HOURS, minutes=1)
    with time_machine.travel(later):
        assert tasks.idempotency_prune_run() == 1
    assert not IdempotencyKey.objects.exists()


def test_ratelimit_task_prunes_finished_windows(db, settings):
    window = settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS
    now = int(timezone.now().timestamp()) // window * window
    RateLimitBucket.objects.create(scope="key:1", window_start=now - 3 * window, count=5)
    current = RateLimitBucket.objects.create(scope="key:1", window_start=now, count=1)
    assert tasks.ratelimit_prune_run() == 1
    assert list(RateLimitBucket.objects.values_list("pk", flat=True)) == [current.pk]


def test_audit_task_prunes_expired_rejected_rows(db, settings):
    settings.AUXOT_AUDIT_REJECTED_RETENTION_DAYS = 30
    old = audit_record(event="intake.rejected", org=None,
                       now=timezone.now() - timedelta(days=31), extra={})
    young = audit_record(event="intake.rejected", org=None,
                         now=timezone.now() - timedelta(days=29), extra={})
    assert tasks.audit_rejected_prune_run() == 1
    remaining = set(AuditEvent.objects.values_list("pk", flat=True))
    assert old.pk not in remaining and young.pk in remaining
