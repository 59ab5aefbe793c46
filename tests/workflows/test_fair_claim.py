"""Fair claiming: one organization's backlog never puts another's due items behind it all.

Runs on both databases (PostgreSQL: the LATERAL claim; SQLite: the ranked UPDATE).
"""

import ast
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apikeys.services import apikey_issue
from auxot import rawsql
from auxot.models import Organization
from intakes.services import intake_trigger
from tests.conftest import make_workflow
from workflows import batch
from workflows.batch import work_items_claim_batch
from workflows.models import StepRun, WorkItem
from workflows.replay import work_item_replay
from workflows.services import work_item_create, work_item_new

TRANSFORM = ("transform", {"expression": "input"})
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _ring_from_the_start(monkeypatch):
    monkeypatch.setattr(batch, "_ring_cursor", 0)


def _backlog(workflow, count: int, *, start, step=timedelta(milliseconds=1)) -> list[WorkItem]:
    """`count` items of `workflow`, due from `start` on, one `step` apart (oldest first)."""
    with transaction.atomic():
        return [work_item_create(workflow=workflow, input={"n": n}, now=start + step * n)
                for n in range(count)]


def _claimed(limit: int) -> list[WorkItem]:
    return [claim.item for claim in work_items_claim_batch(now=timezone.now(), limit=limit)]


def test_one_due_item_of_a_small_org_is_in_the_first_claim_behind_a_big_backlog(cast):
    start = timezone.now() - timedelta(minutes=5)
    big = _backlog(make_workflow(cast.org_a, [TRANSFORM]), 60, start=start)
    small = _backlog(make_workflow(cast.org_b, [TRANSFORM]), 1, start=start + timedelta(minutes=1))
    claimed = _claimed(5)
    assert small[0].pk in {item.pk for item in claimed}  # FIFO across orgs: never
    # The rest of the claim is the big org's oldest, in order: within an org, oldest first.
    assert [item.pk for item in claimed if item.org_id == cast.org_a.pk] == [
        item.pk for item in big[:4]]


def test_one_org_alone_still_fills_the_claim_oldest_first(cast):
    items = _backlog(make_workflow(cast.org_a, [TRANSFORM]), 12,
                     start=timezone.now() - timedelta(minutes=1))
    assert [item.pk for item in _claimed(10)] == [item.pk for item in items[:10]]
    assert [item.pk for item in _claimed(10)] == [item.pk for item in items[10:]]


def test_two_backlogs_share_a_claim_and_the_rest_fills_it(cast):
    start = timezone.now() - timedelta(minutes=5)
    _backlog(make_workflow(cast.org_a, [TRANSFORM]), 30, start=start)
    _backlog(make_workflow(cast.org_b, [TRANSFORM]), 3, start=start + timedelta(minutes=1))
    claimed = _claimed(8)
    by_org = [item.org_id for item in claimed]
    assert len(claimed) == 8
    assert by_org.count(cast.org_b.pk) == 3 and by_org.count(cast.org_a.pk) == 5


def test_more_orgs_than_a_claim_holds_take_turns(cast):
    """Six orgs with a backlog each, claims of 4: every org gets its first item served
    within two claims (not the four oldest orgs again and again)."""
    start = timezone.now() - timedelta(minutes=5)
    orgs = [cast.org_a, cast.org_b] + [
        Organization.objects.create(name=f"Org {n}", slug=f"org-fair-{n}") for n in range(4)]
    for number, org in enumerate(orgs):
        _backlog(make_workflow(org, [TRANSFORM]), 5, start=start + timedelta(seconds=number))
    first, second = _claimed(4), _claimed(4)
    assert len({item.org_id for item in first}) == 4  # one each, not four of the oldest org
    assert {item.org_id for item in first + second} == {org.pk for org in orgs}
    third = _claimed(4)
    assert len({item.org_id for item in third}) == 4


def test_items_not_due_yet_are_never_claimed(cast):
    later = timezone.now() + timedelta(minutes=5)
    _backlog(make_workflow(cast.org_a, [TRANSFORM]), 3, start=later)
    due = _backlog(make_workflow(cast.org_b, [TRANSFORM]), 1,
                   start=timezone.now() - timedelta(seconds=1))
    assert [item.pk for item in _claimed(10)] == [due[0].pk]


# --- WorkItem.org: every way an item is inserted sets it -----------------------------------
def _failed(workflow) -> WorkItem:
    item = work_item_create(workflow=workflow, input={"n": 1})
    step = workflow.steps.first()
    WorkItem.objects.filter(pk=item.pk).update(
        status="failed", finished_at=timezone.now(), next_run_at=None,
        error={"code": "http_status", "message": "no", "step": step.name, "step_position": 1})
    StepRun.objects.create(work_item=item, step=step, attempt=1, status="failed",
                           started_at=timezone.now(), finished_at=timezone.now())
    item.refresh_from_db()
    return item


def test_every_insert_path_sets_the_items_org(cast, intake_a):
    """save() / create() (work_item_create, replay, admin, demo, bench), the trigger's
    one-statement raw INSERT, bulk_create, and an item given only its workflow's id."""
    workflow = make_workflow(cast.org_b, [TRANSFORM], name="Other")
    key = apikey_issue(org=cast.org_a, label="k", user=cast.member_a).key
    made = {
        "work_item_create": work_item_create(workflow=workflow, input={}),
        "trigger": intake_trigger(intake=intake_a, key=key, payload={}, ip=None).item,
        "replay": work_item_replay(item=_failed(workflow), user=cast.outsider_b),
        "objects.create by id": WorkItem.objects.create(workflow_id=workflow.pk),
        "bulk_create": WorkItem.objects.bulk_create([WorkItem(workflow=workflow)])[0],
    }
    raw = work_item_new(workflow=workflow, input={})
    sql, params = rawsql.insert(raw)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    made["rawsql.insert"] = raw
    for path, item in made.items():
        stored = WorkItem.objects.filter(pk=item.pk).values_list("org_id", flat=True).get()
        wanted = WorkItem.objects.filter(pk=item.pk).values_list("workflow__org_id",
                                                                 flat=True).get()
        assert stored == wanted, path


def test_a_workflow_moved_to_another_org_takes_its_items_along(cast):
    workflow = make_workflow(cast.org_a, [TRANSFORM])
    item = work_item_create(workflow=workflow, input={})
    workflow.org = cast.org_b
    workflow.save()
    item.refresh_from_db()
    assert item.org_id == cast.org_b.pk


def test_the_database_refuses_an_item_without_an_org(cast):
    item = work_item_create(workflow=make_workflow(cast.org_a, [TRANSFORM]), input={})
    with pytest.raises(IntegrityError), transaction.atomic():
        WorkItem.objects.filter(pk=item.pk).update(org=None)


# --- Every queue pick is fair, or says why it need not be ----------------------------------
# A "queue pick": code that takes due rows in due-time or arrival order (the order that
# lets one tenant's backlog go first) or takes rows with SKIP LOCKED. Found from the code:
# a new one fails until listed here.
PICK = re.compile(r"SKIP LOCKED|skip_locked|ORDER BY (next_|arrived_at|enqueued)"
                  r"|order_by\(\s*\"(next_|arrived_at|enqueued)")
FAIR = {
    # Tested above: a share per org, oldest first within one.
    "workflows/batch.py:_CLAIM_PG", "workflows/batch.py:_CLAIM_SQLITE",
}
WHY_NOT = {
    "workflows/replay.py:replay_batch_chunk":
        "locks one bulk replay's own row by id (skip_locked: a twin task returns), no pick "
        "among tenants; each bulk replay is its own task that re-queues itself after its "
        "time budget, and the items it creates are claimed fairly by the drain",
    "workflows/providers.py:_ahead_of":
        "one provider's line: a provider belongs to one org, FIFO within it is the promise",
    "workflows/providers.py:provider_wake_next":
        "one provider's line: a provider belongs to one org, FIFO within it is the promise",
    "intakes/callbacks.py:callback_deliveries_due":
        "the dispatcher caps deliveries in flight per org (threads - org reserve) and reads "
        "again without the orgs at their cap (exclude_orgs): one org's burst takes its share "
        "of the senders and the others' due deliveries come next",
    "intakes/callbacks.py:callback_deliveries_wake":
        "AUXOT_CALLBACK_DELIVERY=tasks only (the dispatcher is the default): it re-queues "
        "retries and lost messages on the broker, which is first in, first out across orgs; "
        "a fair order there would need per-org broker queues (left as is, documented)",
}


def _picks() -> set[str]:
    found = set()
    for package in ("auxot", "workflows", "intakes", "apikeys"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            source = path.read_text()
            tree = ast.parse(source)
            name = path.relative_to(ROOT).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and PICK.search(
                        ast.get_source_segment(source, node) or ""):
                    found.add(f"{name}:{node.name}")
            for node in tree.body:  # module-level SQL constants
                if isinstance(node, ast.Assign) and PICK.search(
                        ast.get_source_segment(source, node) or ""):
                    found |= {f"{name}:{target.id}" for target in node.targets
                              if isinstance(target, ast.Name)}
    return found


def test_every_queue_pick_is_fair_or_says_why_not():
    picks = _picks()
    assert "workflows/batch.py:_CLAIM_PG" in picks  # the walk finds what it looks for
    unlisted = picks - FAIR - set(WHY_NOT)
    assert not unlisted, f"queue picks neither fair nor explained: {sorted(unlisted)}"
    gone = (FAIR | set(WHY_NOT)) - picks
    assert not gone, f"listed but no longer found (remove them): {sorted(gone)}"
