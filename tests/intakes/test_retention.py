"""Retention: redaction at ingest, redaction after N days, deletion after M days, audited,
batched, on an idempotent django-q2 schedule."""

from datetime import timedelta

import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone
from django_q.models import Schedule

from auxot.models import AuditEvent
from intakes.callbacks import callback_delivery_create, callback_delivery_process
from intakes.models import CallbackAttempt
from intakes.retention import SCHEDULE_NAME, retention_run, retention_schedule_ensure
from intakes.services import intake_create, intake_update
from tests.conftest import bearer, make_workflow, trigger
from workflows.batch import work_item_process
from workflows.models import StepRun, WorkItem
from workflows.retention import json_path_parse, json_paths_redact

pytestmark = pytest.mark.django_db
BODY = {"customer": {"email": "ada@example.com", "name": "Ada"}, "n": 1,
        "items": [{"card": "4111", "sku": "a"}, {"card": "5500", "sku": "b"}]}


@pytest.fixture
def plain(cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{seen: input}"})],
                             name="Plain")
    return intake_create(org=cast.org_a, workflow=workflow, name="Plain intake")


def _finished(api, intake, token, body=None) -> WorkItem:
    work_id = trigger(api, intake.pk, token, body=body or BODY).json()["work_id"]
    work_item_process(work_id=work_id, drain_seconds=0)
    item = WorkItem.objects.get(pk=work_id)
    assert item.status == "completed"
    return item


def _poll(api, intake, item, token) -> dict:
    return api.get(f"/v1/intake/{intake.pk}/work/{item.pk}", **bearer(token)).json()


def test_listed_paths_are_redacted_before_the_payload_is_stored(api, cb_intake, member_token):
    intake_update(intake=cb_intake, changes={"redact_paths": [
        "$.customer.email", "$.items[*].card", "$.absent.path"]})
    cb_intake.callback_url = ""
    cb_intake.save()
    item = _finished(api, cb_intake, member_token)
    assert item.input == {"customer": {"email": "[REDACTED]", "name": "Ada"}, "n": 1,
                          "items": [{"card": "[REDACTED]", "sku": "a"},
                                    {"card": "[REDACTED]", "sku": "b"}]}
    assert "ada@example.com" not in str(StepRun.objects.get(work_item=item).output)


def test_bad_redact_paths_are_refused(cast, plain):
    from auxot.errors import ApplicationError

    for bad in (["customer.email"], ["$"], ["$..email"], ["$[?(@.x)]"], "$.a", [1]):
        with pytest.raises(ApplicationError):
            intake_update(intake=plain, changes={"redact_paths": bad})


def test_json_path_subset_parses_quoted_and_indexed_segments():
    assert json_path_parse("$['odd key'][2].x") == ["odd key", 2, "x"]
    assert json_paths_redact({"a": [1, {"b": 2}]}, ["$.a[1].b", "$.a[5]"]) == {
        "a": [1, {"b": "[REDACTED]"}]}
    assert json_paths_redact([{"a": 1}], ["$[*].a"]) == [{"a": "[REDACTED]"}]


@override_settings(AUXOT_RETENTION_PAYLOAD_DAYS=7, AUXOT_RETENTION_DELETE_DAYS=30)
def test_payload_redacted_after_n_days_then_item_deleted_after_m_days_audited(
        api, receiver, cb_intake, member_token):
    receiver.expect_request("/hook").respond_with_data("receiver says ada@example.com")
    item = _finished(api, cb_intake, member_token)
    delivery = callback_delivery_create(work_item=item)
    callback_delivery_process(delivery_id=delivery.pk)
    assert "ada@example.com" in CallbackAttempt.objects.get().response_body

    with time_machine.travel(timezone.now() + timedelta(days=6, hours=23)):
        assert retention_run().redacted == 0
    assert WorkItem.objects.get(pk=item.pk).redacted_at is None

    with time_machine.travel(timezone.now() + timedelta(days=7, hours=1)):
        report = retention_run()
    assert (report.redacted, report.deleted) == (1, 0)
    item.refresh_from_db()
    assert item.redacted_at is not None and item.input is None and item.output is None
    assert item.status == "completed"
    run = StepRun.objects.get(work_item=item)
    assert run.output is None and run.status == "completed"
    assert CallbackAttempt.objects.get().response_body == ""
    polled = _poll(api, cb_intake, item, member_token)
    assert polled["status"] == "completed" and polled["output"] is None
    assert polled["redacted_at"] and polled["steps"][0]["status"] == "completed"
    [audit] = AuditEvent.objects.filter(event="work_items.redacted")
    assert audit.org == cb_intake.org and audit.object_id == str(cb_intake.pk)
    assert audit.extra == {"count": 1, "older_than_days": 7, "intake": cb_intake.name}

    with time_machine.travel(timezone.now() + timedelta(days=29)):
        assert retention_run().deleted == 0
    with time_machine.travel(timezone.now() + timedelta(days=30, hours=1)):
        assert retention_run().deleted == 1
    assert not WorkItem.objects.filter(pk=item.pk).exists()
    [audit] = AuditEvent.objects.filter(event="work_items.deleted")
    assert audit.extra["count"] == 1 and audit.extra["older_than_days"] == 30


def test_intake_settings_override_the_defaults_and_zero_means_never(
        api, cb_intake, plain, member_token):
    cb_intake.callback_url = ""
    cb_intake.save()
    intake_update(intake=cb_intake, changes={"payload_retention_days": 1,
                                             "item_retention_days": 0})
    kept, short = _finished(api, plain, member_token, {"n": 1}), _finished(
        api, cb_intake, member_token)
    with time_machine.travel(timezone.now() + timedelta(days=400)):
        retention_run()
    assert not WorkItem.objects.filter(pk=kept.pk).exists()  # the defaults: 90 days
    assert WorkItem.objects.get(pk=short.pk).redacted_at is not None


def test_failed_items_keep_their_error_code_but_not_the_message(api, plain, member_token):
    item = _finished(api, plain, member_token, {"n": 1})
    WorkItem.objects.filter(pk=item.pk).update(status="failed", error={
        "code": "bad_handoff", "message": "got ada@example.com", "step": "s", "step_position": 1,
        "violations": [{"pointer": "/x", "message": "ada@example.com"}]})
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        retention_run()
    item.refresh_from_db()
    assert item.error == {"code": "bad_handoff", "step": "s", "step_position": 1,
                          "message": "Redacted by the retention policy."}


def test_running_items_are_never_touched(api, plain, member_token):
    work_id = trigger(api, plain.pk, member_token).json()["work_id"]
    with time_machine.travel(timezone.now() + timedelta(days=400)):
        assert retention_run().redacted == 0 and retention_run().deleted == 0
    assert WorkItem.objects.get(pk=work_id).input == {"n": 1}


def test_retention_works_in_batches_each_audited(api, plain, member_token):
    for _ in range(5):
        _finished(api, plain, member_token, {"n": 1})
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        assert retention_run(batch=2).redacted == 5
    counts = sorted(e.extra["count"] for e in AuditEvent.objects.filter(
        event="work_items.redacted"))
    assert counts == [1, 2, 2]


def test_retention_stops_at_its_time_budget_and_resumes(api, plain, member_token):
    _finished(api, plain, member_token, {"n": 1})
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        report = retention_run(budget_seconds=0)
        assert not report.finished and report.redacted == 0
        assert retention_run().redacted == 1


def test_schedule_exists_after_migrate_and_ensuring_it_again_changes_nothing():
    [schedule] = Schedule.objects.filter(name=SCHEDULE_NAME)
    assert schedule.func == "intakes.tasks.retention_run" and schedule.minutes == 60
    assert retention_schedule_ensure() is False
    with override_settings(AUXOT_RETENTION_EVERY_MINUTES=15):
        assert retention_schedule_ensure() is True
    assert Schedule.objects.get(name=SCHEDULE_NAME).minutes == 15
    assert Schedule.objects.filter(name=SCHEDULE_NAME).count() == 1


def test_the_scheduled_task_runs_the_pass(api, plain, member_token):
    from intakes.tasks import retention_run as task

    _finished(api, plain, member_token, {"n": 1})
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        assert task() == "redacted 1, deleted 0"


@pytest.mark.parametrize("task_timeout, budget", [(300, 240.0), (600, 240.0), (60, 48.0)])
def test_the_scheduled_pass_stops_well_inside_the_clusters_task_timeout(
        settings, monkeypatch, task_timeout, budget):
    """A fixed 240 s budget under AUXOT_TASK_TIMEOUT_SECONDS=60: the cluster killed every
    scheduled pass mid-batch, and the batch in hand rolled back each time."""
    from intakes import retention
    from intakes.tasks import retention_run as task

    seen = []
    monkeypatch.setattr(retention, "retention_run", lambda **kw: seen.append(kw) or
                        retention.RetentionReport())
    settings.AUXOT_TASK_TIMEOUT_SECONDS = task_timeout
    task()
    assert seen == [{"budget_seconds": budget}]


def test_admin_shows_retention_settings_redaction_and_the_schedule(
        client, cast, api, plain, member_token):
    item = _finished(api, plain, member_token, {"n": 1})
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        retention_run()
    client.force_login(cast.admin_a)
    page = client.get(f"/admin/intakes/intake/{plain.pk}/change/").content.decode()
    assert "Retention" in page and "redact_paths" in page and "payload_retention_days" in page
    page = client.get(f"/admin/workflows/workitem/{item.pk}/change/").content.decode()
    assert "Redacted at" in page and "Request ID" in page
    cast.admin_a.is_superuser = True
    cast.admin_a.save()
    page = client.get("/admin/django_q/schedule/").content.decode()
    assert SCHEDULE_NAME in page


def test_admin_edit_of_redact_paths_goes_through_the_service(client, cast, plain):
    client.force_login(cast.admin_a)
    url = f"/admin/intakes/intake/{plain.pk}/change/"
    data = {"name": plain.name, "team": "", "callback_url": "", "rate_limit_per_window": "",
            "payload_retention_days": "3", "item_retention_days": "",
            "redact_paths": '["$.customer.email"]'}
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    plain.refresh_from_db()
    assert plain.redact_paths == ["$.customer.email"] and plain.payload_retention_days == 3
    assert AuditEvent.objects.filter(event="intake.changed", object_id=str(plain.pk)).exists()
    data["redact_paths"] = '["customer.email"]'
    page = client.post(url, data).content.decode()
    assert "is not a JSON path" in page


# --- one tenant never holds up the others -------------------------------------------------
def _aged(intake, days_ago: float, **fields) -> WorkItem:
    """A finished item of `intake`, finished `days_ago` days ago."""
    from workflows.services import work_item_create

    item = work_item_create(workflow=intake.workflow, intake=intake, input={"n": 1})
    WorkItem.objects.filter(pk=item.pk).update(
        status=fields.pop("status", "completed"),
        finished_at=timezone.now() - timedelta(days=days_ago), **fields)
    return WorkItem.objects.get(pk=item.pk)


@pytest.fixture
def other_org_intake(cast):
    workflow = make_workflow(cast.org_b, [("transform", {"expression": "input"})], name="B")
    return intake_create(org=cast.org_b, workflow=workflow, name="Org B intake")


def test_an_item_with_a_replay_is_kept_until_the_replay_goes_and_the_run_goes_on(
        plain, other_org_intake):
    """`replay_of` protects the item a replay takes forward: deleting it first raised, and
    every run stopped there, for every tenant after it."""
    intake_update(intake=plain, changes={"item_retention_days": 5})
    intake_update(intake=other_org_intake, changes={"item_retention_days": 1})
    original = _aged(plain, 10, status="failed")
    replay = _aged(plain, 1, replay_of=original)
    elsewhere = _aged(other_org_intake, 5)
    report = retention_run()
    assert report.failed == [] and report.deleted == 1
    assert not WorkItem.objects.filter(pk=elsewhere.pk).exists()
    assert WorkItem.objects.filter(pk__in=[original.pk, replay.pk]).count() == 2
    with time_machine.travel(timezone.now() + timedelta(days=5)):
        assert retention_run().deleted == 2  # the replay, then the item it took forward
    assert not WorkItem.objects.filter(pk__in=[original.pk, replay.pk]).exists()


def test_a_scope_that_fails_is_logged_and_the_others_still_run(plain, other_org_intake,
                                                               monkeypatch, caplog):
    from intakes import retention

    intake_update(intake=plain, changes={"item_retention_days": 1})
    intake_update(intake=other_org_intake, changes={"item_retention_days": 1})
    mine, theirs = _aged(plain, 5), _aged(other_org_intake, 5)
    real = retention._accepted_keep

    def broken_for_plain(ids):
        if mine.pk in ids:
            raise RuntimeError("a bad row")
        real(ids)

    monkeypatch.setattr(retention, "_accepted_keep", broken_for_plain)
    report = retention_run()
    assert report.failed == [str(plain.pk)] and report.deleted == 1
    assert WorkItem.objects.filter(pk=mine.pk).exists()  # its batch rolled back whole
    assert not WorkItem.objects.filter(pk=theirs.pk).exists()
    assert f"retention failed for {plain.pk}" in caplog.text


def test_retention_days_are_at_most_a_century(plain, other_org_intake, client, cast):
    from auxot.errors import ApplicationError
    from intakes.admin import IntakeForm
    from intakes.models import RETENTION_MAX_DAYS, Intake

    for field in ("item_retention_days", "payload_retention_days"):
        with pytest.raises(ApplicationError, match=f"{field}: .*less than or equal to 36500"):
            intake_update(intake=plain, changes={field: RETENTION_MAX_DAYS + 1})
        data = {f.name: getattr(plain, f.name) for f in IntakeForm._meta.model._meta.fields
                if f.name in IntakeForm.base_fields}
        form = IntakeForm(instance=plain, data={**{k: v for k, v in data.items()
                                                   if v is not None},
                                                "workflow": plain.workflow_id,
                                                field: str(2**31 - 1)})
        assert not form.is_valid() and field in form.errors
    # A value saved before the limit: nothing is that old, and the run goes on.
    Intake.objects.filter(pk=plain.pk).update(item_retention_days=2**31 - 1,
                                              payload_retention_days=2**31 - 1)
    intake_update(intake=other_org_intake, changes={"item_retention_days": 1})
    mine, theirs = _aged(plain, 5000), _aged(other_org_intake, 5)
    report = retention_run()
    assert report.failed == [] and report.deleted == 1
    assert WorkItem.objects.filter(pk=mine.pk).exists()
    assert not WorkItem.objects.filter(pk=theirs.pk).exists()


def test_scopes_take_turns_a_batch_at_a_time(plain, other_org_intake, monkeypatch):
    """A backlog in the first intake does not use the budget before the next is looked at."""
    from intakes import retention

    for intake in (plain, other_org_intake):
        intake_update(intake=intake, changes={"payload_retention_days": 1})
    for _ in range(3):
        _aged(plain, 5), _aged(other_org_intake, 5)
    order = []
    real = retention._audit
    monkeypatch.setattr(retention, "_audit", lambda event, org, intake, *args: (
        order.append(intake.name), real(event, org, intake, *args)))
    assert retention_run(batch=1).redacted == 6
    assert order == [plain.name, other_org_intake.name] * 3


# --- at scale: what each batch reads (bench/retention_scale.py) ----------------------------


def test_redaction_empties_callback_bodies_by_delivery_and_skips_empty_ones(
        api, receiver, cb_intake, member_token):
    """By the attempts' delivery column (its foreign key's index), not a join the database
    may answer by reading every attempt; an attempt with no body is not rewritten."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    receiver.expect_request("/hook").respond_with_data("receiver says ada@example.com")
    item = _finished(api, cb_intake, member_token)
    callback_delivery_process(delivery_id=callback_delivery_create(work_item=item).pk)
    with (time_machine.travel(timezone.now() + timedelta(days=31)),
          CaptureQueriesContext(connection) as captured):
        assert retention_run().redacted == 1
    [update] = [q["sql"] for q in captured.captured_queries
                if q["sql"].startswith('UPDATE "intakes_callbackattempt"')]
    assert '"intakes_callbackattempt"."delivery_id" IN (SELECT' in update
    assert "JOIN" not in update and '"intakes_callbackattempt"."response_body" =' in update
    assert CallbackAttempt.objects.get().response_body == ""


def _selections(captured, batch: int) -> list[str]:
    """The batch selection queries: the work items' ids, `batch` at most, oldest first."""
    return [q["sql"] for q in captured.captured_queries
            if q["sql"].startswith('SELECT "workflows_workitem"."id"')
            and q["sql"].rstrip().endswith(f"LIMIT {batch}")]


def test_each_batch_starts_where_the_one_before_ended(plain):
    """A redacted item stays in the index the selection walks, and a deleted one stays there
    until a vacuum: a batch that started from the oldest item again read every item the
    pass had already dealt with, so a pass cost the square of its backlog."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    intake_update(intake=plain, changes={"payload_retention_days": 1, "item_retention_days": 0})
    for days in (5, 4, 3, 2.5, 2):
        _aged(plain, days)
    with CaptureQueriesContext(connection) as captured:
        assert retention_run(batch=2).redacted == 5
    selections = _selections(captured, 2)
    assert len(selections) == 4  # 2, 2, 1, then none left
    assert '"finished_at" >=' not in selections[0]
    assert all('"workflows_workitem"."finished_at" >=' in sql for sql in selections[1:])


def test_a_chain_of_replays_goes_in_one_pass_a_batch_at_a_time(plain):
    """Each replay keeps the item before it: the newest goes first, and the items it kept
    follow in the same pass although their batches' walk had gone past them."""
    intake_update(intake=plain, changes={"item_retention_days": 1})
    first = _aged(plain, 10, status="failed")
    second = _aged(plain, 9, status="failed", replay_of=first)
    third = _aged(plain, 8, replay_of=second)
    later = _aged(plain, 7)
    report = retention_run(batch=1)
    assert (report.deleted, report.failed) == (4, [])
    assert not WorkItem.objects.filter(pk__in=[first.pk, second.pk, third.pk, later.pk]).exists()


def test_a_batch_with_the_same_finish_time_as_the_next_loses_no_item(plain):
    """Items finished at the same instant are told apart by their id."""
    intake_update(intake=plain, changes={"payload_retention_days": 1})
    items = [_aged(plain, 5) for _ in range(5)]
    WorkItem.objects.filter(pk__in=[i.pk for i in items]).update(
        finished_at=items[0].finished_at)
    assert retention_run(batch=2).redacted == 5
    assert not WorkItem.objects.filter(redacted_at__isnull=True).exists()


def test_redaction_has_an_index_without_the_items_it_redacted():
    """Redacted items stay until they are deleted (60 days by default): through an index
    that held them, each run's first batch of each intake read all of them before the first
    item due."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                           ["workitem_unredacted"])
        else:
            cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = %s",
                           ["workitem_unredacted"])
        [definition] = [row[0] for row in cursor.fetchall()]
    assert '"redacted_at" IS NULL' in definition.replace("redacted_at IS", '"redacted_at" IS')
    assert "intake_id" in definition and "finished_at" in definition


def test_deletion_reads_no_payload_of_the_items_it_deletes(plain):
    """The items are collected for the cascade by their ids: reading every column read each
    item's input, output and error only to throw them away."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    intake_update(intake=plain, changes={"item_retention_days": 1})
    _aged(plain, 5), _aged(plain, 4)
    with CaptureQueriesContext(connection) as captured:
        assert retention_run().deleted == 2
    reads = [q["sql"] for q in captured.captured_queries
             if q["sql"].startswith('SELECT "workflows_workitem"."id"')]
    assert reads and not any('"workflows_workitem"."input"' in sql for sql in reads)
    assert not WorkItem.objects.exists()


def test_a_replay_that_commits_after_the_batch_was_read_keeps_its_item_and_the_rest_go(
        plain, other_org_intake, monkeypatch):
    """A batch's ids are read before its transaction; a replay committed in between made the
    deletion hit the replay's protection, and the whole scope failed. The batch locks its
    items and leaves out the ones taken forward meanwhile: they go after their replay."""
    import intakes.retention as retention

    intake_update(intake=plain, changes={"item_retention_days": 1})
    original, other = _aged(plain, 5, status="failed"), _aged(plain, 4)
    real_batches, replays = retention._batches, []

    def replayed_meanwhile(queryset, batch, **kwargs):
        for ids in real_batches(queryset, batch, **kwargs):
            if original.pk in ids and not replays:
                replays.append(_aged(plain, 0, status="running",
                                     replay_of=original))
            yield ids

    monkeypatch.setattr(retention, "_batches", replayed_meanwhile)
    report = retention_run()
    assert report.failed == [] and report.deleted == 1
    assert WorkItem.objects.filter(pk=original.pk).exists()
    assert not WorkItem.objects.filter(pk=other.pk).exists()
    assert WorkItem.objects.filter(replay_of=original).count() == 1
