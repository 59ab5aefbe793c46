"""No act rests on a lease checked by time in an earlier statement.

The class: a holder checks its lease ("lease_until > now", "its token is still on the row",
read in one statement) and acts in a later one; a worker that stalls between the two for
a whole lease acts while a newer holder has the item (takes a provider slot beside it,
writes its ticket, resumes it). Each act must carry its own guard: a compare-and-set on the
lease token in the act's statement, or a row lock taken by the check and held until the act
commits.

`test_every_time_check_of_a_lease_is_reviewed` finds every comparison of a lease's time
(`lease_until`, a work item's `next_run_at`, a delivery's `next_attempt_at`) and every
separate read of a lease token in the engine, the providers, the callbacks, the dispatcher
and replay, by reading the source: each place is listed in REVIEWED with why its act is
safe and, where an act follows, the test here (or elsewhere) that forces the stall between
check and act. A new one fails until it is guarded and listed.
"""

import ast
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import OperationalError, connection, transaction
from django.db.utils import DatabaseError
from django.utils import timezone

from tests.conftest import make_workflow
from workflows import providers
from workflows.engine import work_item_claim
from workflows.models import Provider, ProviderTicket, WorkItem
from workflows.providers import ProviderGate, provider_slot_release, provider_wake_next
from workflows.services import work_item_create

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["workflows", "intakes"]  # engine, batch, providers, kinds, replay, callbacks, dispatcher
LEASE_TIMES = r"(lease_until|next_run_at|next_attempt_at)"
# A lease's time compared (ORM lookups, raw SQL, Python), or a lease token read on its own.
CHECK = re.compile(
    LEASE_TIMES + r"(__(lt|lte|gt|gte)\s*=|\s*[<>]=?\s*(%(\(\w+\))?s|now\b|timezone\.now))"
    r"|lease_token\s*=\s*[\w.]+\s*\)\s*\.\s*(exists|first|get|count|values|values_list)\("
    r"|values_list\([^)]*[\"']lease_token[\"']"
    r"|\bif\s+[\w.]+\.lease_token\b")

CAS = "the check is the act's own WHERE (one guarded UPDATE): no statement between"
TESTED = "tests/workflows/test_lease_check_then_act.py::"
REVIEWED = {
    ("workflows/engine.py", "work_item_claim"): (CAS, "tests/workflows/test_engine.py"),
    ("workflows/batch.py", "_CLAIM_PG"): (
        "work_items_claim_batch's statement on PostgreSQL: " + CAS
        + " (FOR UPDATE SKIP LOCKED)", "tests/workflows/test_engine_batch.py"),
    ("workflows/batch.py", "_CLAIM_SQLITE"): (
        "work_items_claim_batch's statement on SQLite: " + CAS,
        "tests/workflows/test_engine_batch.py"),
    ("workflows/batch.py", "_attempts_open"): (
        "reads the tokens under SELECT ... FOR UPDATE: the rows stay locked until the attempt "
        "rows are in", "tests/workflows/test_lease_takeover_inserts.py"),
    ("workflows/providers.py", "_held"): (
        "counts other items' live slots (time is what frees a SIGKILLed holder's slot); the "
        "grant it decides is under the provider's lock and the item's token compare-and-set, "
        "and is leased from the grant's time, not the attempt's",
        TESTED + "test_a_newer_holder_cannot_take_the_item_between_the_gates_check_and_grant"),
    ("workflows/providers.py", "_ahead_of"): (
        "as _held: who waits ahead, read under the same locks as the grant",
        TESTED + "test_a_slot_granted_after_a_stall_is_leased_from_the_grant"),
    ("workflows/providers.py", "provider_wake_next"): (
        "acts only on items nobody holds: `lease_token=''` is in its UPDATE's WHERE",
        TESTED + "test_waking_the_line_leaves_an_item_a_worker_holds_alone"),
    ("workflows/services.py", "_waiting_approval"): (
        "a decision reads the token under the item's row lock (`_locked`, SELECT ... FOR "
        "UPDATE) and writes in that transaction: a claim waits for it, never between",
        "tests/workflows/test_work_item_races.py::"
        "test_approve_racing_the_deadline_resume_exactly_one_outcome"),
    ("workflows/wake.py", "work_items_due"): (
        "no act on an item: whether to ask for a drain (a spare drain claims nothing)", None),
    ("workflows/presenters.py", "_phase"): ("the poll's Auxot-State: no act", None),
    ("intakes/ops/collector.py", "*"): ("metrics: no act", None),
    ("intakes/ops/checks.py", "*"): ("the health check: no act", None),
    ("intakes/callbacks.py", "_wakeable"): (
        "which deliveries to enqueue; the claim re-checks due-ness in its own UPDATE", None),
    ("intakes/callbacks.py", "callback_deliveries_claim"): (
        CAS, "tests/intakes/test_delivery_lease_lost.py"),
    ("intakes/callbacks.py", "_claim"): (CAS, "tests/intakes/test_delivery_lease_lost.py"),
}


def _enclosing(tree: ast.AST) -> dict[int, str]:
    """Line number -> name of the innermost function holding it (or, at module level, of
    the constant it is in: a statement's SQL kept beside the function that runs it)."""
    owner: dict[int, str] = {}

    def visit(node, name):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (
                name == "<module>" and isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Name)):
            name = getattr(node, "name", None) or node.targets[0].id
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                owner[line] = name
        for child in ast.iter_child_nodes(node):
            visit(child, name)

    visit(tree, "<module>")
    return owner


def _checks_found() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/migrations/" in rel or "/management/" in rel:
                continue
            text = path.read_text()
            owner = _enclosing(ast.parse(text))
            for number, line in enumerate(text.splitlines(), start=1):
                if line.lstrip().startswith("#") or not CHECK.search(line):
                    continue
                key = (rel, "*") if (rel, "*") in REVIEWED else (rel, owner.get(number, "?"))
                found.setdefault(key, []).append(f"{rel}:{number}: {line.strip()}")
    return found


def test_every_time_check_of_a_lease_is_reviewed():
    found = _checks_found()
    new = {key: lines for key, lines in found.items() if key not in REVIEWED}
    assert not new, ("a lease checked by time (or its token read on its own) before an act: "
                     "guard the act on the token in its own statement or under a row lock, "
                     f"then list it in REVIEWED with why: {new}")
    gone = set(REVIEWED) - set(found)
    assert not gone, f"REVIEWED lists places that no longer check a lease: {gone}"
    for key, (_why, test) in REVIEWED.items():
        if test is None:
            continue
        path, _, name = test.partition("::")
        source = (ROOT / path).read_text()
        assert not name or f"def {name}(" in source, f"{key}: no test {test}"


def test_the_scan_finds_the_patterns_it_looks_for():
    """The pattern itself, on lines shaped as the class's members are (so an empty REVIEWED
    would not pass by a pattern that matches nothing)."""
    for line in ['tickets.filter(lease_until__gt=now)', "WHERE next_run_at <= %s AND",
                 "if item.next_run_at > now:", "filter(pk=1, lease_token=token).exists()",
                 'values_list("pk", "lease_token")', "    if item.lease_token:"]:
        assert CHECK.search(line), line
    for line in ["next_run_at=now", "lease_token=token).update(x=1)"]:
        assert not CHECK.search(line), line


# --- The stall between check and act, forced ------------------------------------------------
def _provider(cast, limit=1):
    return Provider.objects.create(org=cast.org_a, name="p", base_url="http://127.0.0.1:9/v1",
                                   model="m", concurrency_limit=limit, timeout_seconds=5)


def _items(cast, count):
    workflow = make_workflow(cast.org_a, [("agent", {"provider": "p", "prompt": "hi"})])
    with transaction.atomic():
        return [work_item_create(workflow=workflow, input={"n": n}) for n in range(count)]


def _gate(claim):
    return ProviderGate(org_id=claim.item.workflow.org_id, work_id=claim.item.pk,
                        now=timezone.now(), lease_seconds=5, lease_token=claim.token)


def _take_lease_from_another_connection(work_id) -> bool:
    """A newer holder's claim of the item, from its own connection, waiting at most a
    moment for a lock: True if it took the lease."""
    took = {}

    def claim():
        try:
            with connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    cursor.execute("SET lock_timeout = '400ms'")
                else:
                    cursor.execute("PRAGMA busy_timeout = 400")
            took["b"] = WorkItem.objects.filter(pk=work_id).update(lease_token="b" * 32) == 1
        except (OperationalError, DatabaseError):
            took["b"] = False  # it waited on the holder's lock: the holder acts first
        finally:
            connection.close()

    thread = threading.Thread(target=claim)
    thread.start()
    thread.join(30)
    return took["b"]


@pytest.mark.django_db(transaction=True)
def test_a_newer_holder_cannot_take_the_item_between_the_gates_check_and_grant(
        cast, monkeypatch):
    """Worker A's gate checked its lease and is about to decide the grant when B (another
    connection) claims the item. The check locks the item's row (a compare-and-set on the
    token), so B cannot take it until A's grant commits: never both B the lease and A a
    slot granted under the lease it lost."""
    provider = _provider(cast)
    [item] = _items(cast, 1)
    claim_a = work_item_claim(work_id=item.pk, now=timezone.now())
    real_ahead, b_took = providers._ahead_of, []

    def ahead_after_a_stall(ticket, now, *, at_most):
        b_took.append(_take_lease_from_another_connection(item.pk))
        return real_ahead(ticket, now, at_most=at_most)

    monkeypatch.setattr(providers, "_ahead_of", ahead_after_a_stall)
    slot = _gate(claim_a).acquire(provider)
    assert b_took, "the stall never happened: the test proves nothing"
    assert not (b_took[0] and slot.granted), "A took a slot for an item B held"
    assert slot.granted  # A still held it at its check; B waited
    assert WorkItem.objects.get(pk=item.pk).lease_token == claim_a.token


def test_a_slot_granted_after_a_stall_is_leased_from_the_grant(cast, time_machine):
    """A's gate was made when its attempt started; A stalled past the step's timeout (nobody
    claimed the item meanwhile) before asking for the slot. The slot's lease runs from the
    grant, and the item's lease with it: otherwise the slot would be free to the next item
    at once (two calls under a limit of one) and the item claimable by another worker."""
    provider = _provider(cast, limit=1)
    first, second = _items(cast, 2)
    claim_a = work_item_claim(work_id=first.pk, now=timezone.now())
    gate = _gate(claim_a)
    time_machine.move_to(timezone.now() + timedelta(minutes=10))
    assert gate.acquire(provider).granted
    ticket = ProviderTicket.objects.get(work_item=first)
    assert ticket.lease_until > timezone.now()
    assert WorkItem.objects.get(pk=first.pk).next_run_at == ticket.lease_until
    claim_b = work_item_claim(work_id=second.pk, now=timezone.now())
    assert not _gate(claim_b).acquire(provider).granted  # the one slot is A's
    assert work_item_claim(work_id=first.pk, now=timezone.now()) is None  # A holds it


def test_waking_the_line_leaves_an_item_a_worker_holds_alone(cast):
    """The line was read (the item waits for a slot) and a worker claimed the item before
    the wake-up's write: the write matches only items nobody holds."""
    provider = _provider(cast, limit=1)
    [item] = _items(cast, 1)
    later = timezone.now() + timedelta(hours=1)
    ProviderTicket.objects.create(provider=provider, work_item=item, arrived_at=timezone.now())
    WorkItem.objects.filter(pk=item.pk).update(waiting_on=WorkItem.Waiting.PROVIDER,
                                               lease_token="w" * 32, next_run_at=later)
    assert provider_wake_next(provider=provider, now=timezone.now()) == 0
    assert WorkItem.objects.get(pk=item.pk).next_run_at == later


def test_a_late_release_is_one_statement_guarded_by_the_token(cast):
    """The release's check and its delete are one DELETE whose WHERE names the token: no
    statement for a stall to come between."""
    from django.test.utils import CaptureQueriesContext

    provider = _provider(cast)
    [item] = _items(cast, 1)
    claim_a = work_item_claim(work_id=item.pk, now=timezone.now())
    assert _gate(claim_a).acquire(provider).granted
    with CaptureQueriesContext(connection) as queries:
        provider_slot_release(provider=provider, work_id=item.pk, lease_token="x" * 32)
    deletes = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 1 and "lease_token" in deletes[0]
    assert not [q for q in queries if q["sql"].lstrip().upper().startswith("SELECT")
                and "providerticket" in q["sql"].lower()]
    assert ProviderTicket.objects.filter(work_item=item).exists()  # not A's to drop
