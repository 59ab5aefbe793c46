"""What a step computes is bounded and storable: an org admin's expression and a caller's
input cannot make a worker run for minutes, take gigabytes, or write a value the database
refuses (which, in a batch, would roll back other tenants' items with it).

- an expression (transform, http url/headers/body, agent prompts) runs within a number of
  steps and of items per value, and its result must be writable within a step output's size;
- a step's output that is not storable JSON (NaN, Infinity, \\u0000, too large) fails that
  item alone with `bad_output`;
- a server's declared charset never picks a decoder that is quadratic in the answer."""

import re

import pytest
from django.db import transaction

from tests.conftest import make_workflow
from tests.fakeserver import Reply
from workflows.batch import work_drain, work_item_process
from workflows.models import StepRun, WorkItem
from workflows.services import work_item_create

DOUBLED = " | ".join(["[@, @]"] * 40)  # nested shared lists: 2^40 leaves written out
FLATTENED = " | ".join(["[@, @][]"] * 30)  # a real list doubled 30 times
JOINED = "input | " + " | ".join(["join('', [@, @])"] * 30)  # a string doubled 30 times
VISITED = " | ".join(["[@, @]"] * 30) + " | " + "[*]" * 30  # a projection to every leaf


def _run(workflow, input):
    item = work_item_create(workflow=workflow, input=input)
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return item


@pytest.mark.parametrize(("expression", "message"), [
    (DOUBLED, "larger than"), (f"to_string({DOUBLED})", "larger than"),
    (FLATTENED, "grew past|steps"), (JOINED, "join: the result would pass"),
    (VISITED, "steps"),
], ids=["nested", "to_string", "flatten", "join", "projection"])
def test_an_expression_that_explodes_fails_the_item_at_its_limit(cast, expression, message):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": expression})])
    item = _run(workflow, "ab")
    assert item.status == "failed"
    assert item.error["code"] == "bad_expression"
    assert re.search(message, item.error["message"]), item.error["message"]


@pytest.mark.parametrize(("expression", "input"), [
    ("to_number(input.x)", {"x": "1e999"}),  # Infinity (a caller's text: any database)
    ("to_number(input.x)", {"x": "nan"}),
    ("to_number(input.x)", {"x": "-inf"}),
], ids=["infinity", "nan", "minus-infinity"])
def test_an_unstorable_output_fails_its_item_alone_in_a_batch(cast, expression, input):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": expression})])
    with transaction.atomic():
        bad = work_item_create(workflow=workflow, input=input)
        good = [work_item_create(workflow=workflow, input={"amounts": [1, 2], "x": "3"})
                for _ in range(5)]
    assert work_drain(budget=30, batch=10) == 6
    bad.refresh_from_db()
    assert (bad.status, bad.error["code"]) == ("failed", "bad_output")
    assert "NaN or Infinity" in bad.error["message"]
    for item in good:
        item.refresh_from_db()
        assert item.status == "completed", item.error
        assert StepRun.objects.filter(work_item=item).count() == 1  # no extra attempt


def test_an_output_over_the_limit_is_bad_output(cast, settings, fake_server):
    settings.AUXOT_STEP_OUTPUT_MAX_CHARS = 2048
    fake_server.script = [Reply(200, {"text": "x" * 3000})]
    workflow = make_workflow(cast.org_a, [("http", {"url": f"{fake_server.url}/hook"})])
    item = _run(workflow, {})
    assert (item.status, item.error["code"]) == ("failed", "bad_output")
    assert "larger than 2,048 characters" in item.error["message"]
    assert WorkItem.objects.get(pk=item.pk).output is None
    small = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Small")
    assert _run(small, {"text": "x" * 100}).status == "completed"


def test_an_http_body_that_explodes_sends_nothing(cast, fake_server):
    workflow = make_workflow(cast.org_a, [("http", {"method": "POST",
                                                    "url": f"{fake_server.url}/hook",
                                                    "body": DOUBLED})])
    item = _run(workflow, {})
    assert (item.status, item.error["code"]) == ("failed", "bad_expression")
    assert fake_server.requests == []


def test_an_http_steps_expressions_share_one_budget(cast, settings, fake_server):
    """URL, headers and body each fit a step output's size; together they do not. Each
    expression used to get a budget of its own, so N headers could write N outputs."""
    settings.AUXOT_STEP_OUTPUT_MAX_CHARS = 4096
    headers = {f"X-Part-{n}": "input.text" for n in range(4)}  # 4 x ~1,500 characters
    workflow = make_workflow(cast.org_a, [("http", {"method": "POST",
                                                    "url": f"{fake_server.url}/hook",
                                                    "headers": headers})])
    item = _run(workflow, {"text": "x" * 1500})
    assert (item.status, item.error["code"]) == ("failed", "bad_expression")
    assert "results together are larger than 4,096" in item.error["message"]
    assert fake_server.requests == []
    fake_server.script = [Reply(200, {})]
    one = make_workflow(cast.org_a, [("http", {"method": "POST", "url": f"{fake_server.url}/h",
                                               "headers": {"X-Part": "input.text"}})],
                        name="One")
    assert _run(one, {"text": "x" * 1500}).status == "completed"


def test_an_agent_prompts_placeholders_share_one_budget(cast, monkeypatch, fake_server):
    """Each placeholder runs well within the steps an expression may take; all of them
    together do not, and the item fails before the provider is called."""
    from workflows.kinds import _shared
    from workflows.models import Provider

    monkeypatch.setattr(_shared, "EXPRESSION_MAX_VISITS", 60)
    Provider.objects.create(org=cast.org_a, name="ai", base_url=fake_server.url + "/v1",
                            model="m", api_key_secret="", timeout_seconds=5)
    placeholder = "{{ input.l[*].a | [0] }}"  # about 25 steps over 10 items
    assert _shared.expression_search("input.l[*].a | [0]",
                                     {"input": {"l": [{"a": 1}] * 10}}) == 1
    workflow = make_workflow(cast.org_a, [("agent", {"provider": "ai",
                                                     "prompt": placeholder * 4})])
    item = _run(workflow, {"l": [{"a": 1}] * 10})
    assert (item.status, item.error["code"]) == ("failed", "bad_expression")
    assert "more than 60 steps" in item.error["message"]
    assert fake_server.requests == []


def test_the_budget_is_one_steps_not_the_next_ones(cast, monkeypatch):
    """Two steps, each under the limit alone: the second starts with a budget of its own."""
    from workflows.kinds import _shared

    monkeypatch.setattr(_shared, "EXPRESSION_MAX_VISITS", 60)
    expression = "input.l[*].a | [0]"
    workflow = make_workflow(cast.org_a, [("transform", {"expression": expression}),
                                          ("transform", {"expression": expression})])
    item = _run(workflow, {"l": [{"a": 1}] * 10})
    assert (item.status, item.output) == ("completed", 1), item.error


def test_a_quadratic_charset_is_read_as_utf8(cast, fake_server):
    """Python's punycode decoder is quadratic: 600 kB took a worker 90 s of CPU."""
    body = b"x" * 600_000 + b"-" + b"99" * 300_000
    fake_server.script = [Reply(200, body, {"Content-Type": "text/plain; charset=punycode"})]
    workflow = make_workflow(cast.org_a, [("http", {"url": f"{fake_server.url}/hook"})])
    item = _run(workflow, {})
    assert item.status == "completed", item.error
    assert item.output["text"].startswith("xxxx")


def test_a_steps_timeout_never_outlives_the_workers_task(cast, settings):
    """django-q2 kills a task at AUXOT_TASK_TIMEOUT_SECONDS: a step allowed longer would be
    killed mid-attempt and keep its lease (next_run_at) until its own timeout, for years."""
    from datetime import timedelta

    from django.core.exceptions import ValidationError
    from django.utils import timezone

    from workflows.engine import _lease
    from workflows.models import Provider, Step, step_timeout_max

    assert step_timeout_max() == settings.AUXOT_TASK_TIMEOUT_SECONDS - 20
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    legacy = Step.objects.get(workflow=workflow)
    Step.objects.filter(pk=legacy.pk).update(timeout_seconds=100_000_000)  # saved before
    legacy.refresh_from_db()
    assert legacy.timeout == step_timeout_max()
    now = timezone.now()
    assert _lease(legacy, now) - now == timedelta(
        seconds=step_timeout_max() + settings.AUXOT_LEASE_GRACE_SECONDS)
    with pytest.raises(ValidationError, match="At most"):
        legacy.full_clean()
    legacy.timeout_seconds = step_timeout_max()
    legacy.full_clean()
    provider = Provider(org=cast.org_a, name="slow", base_url="https://a.example/v1",
                        model="m", timeout_seconds=100_000)
    with pytest.raises(ValidationError, match="At most"):
        provider.full_clean()


def test_every_item_a_node_handles_counts_against_one_budget(monkeypatch):
    """`sort`, `contains`, a slice or a projection's copies cost one visit each but handle
    a whole list: what they are handed and what they build is counted."""
    from workflows.kinds import _shared
    from workflows.kinds._shared import ExpressionTooLarge, expression_search

    data = {"l": list(range(400))}
    assert expression_search("sort(l)", data) == data["l"]
    monkeypatch.setattr(_shared, "EXPRESSION_MAX_WORK", 1000)
    for expression in ("[l, l, l] | [*].sort(@)", "[l, l, l] | [*][::-1]",
                       "[l, l, l] | [*].contains(@, `7`)"):
        with pytest.raises(ExpressionTooLarge, match="handled more than 1,000 items"):
            expression_search(expression, data)


BUILT_APART = f"(@ | {DOUBLED})"  # each side builds its own 40 nested lists, 2^40 leaves


def test_values_built_apart_are_compared_once_per_pair_of_lists(monkeypatch):
    """`==`, `!=` and `contains` walk each pair of containers once, charged to the budget:
    Python's `==` walked every leaf of two values built apart (2^k for k stages)."""
    from workflows.kinds import _shared
    from workflows.kinds._shared import expression_search

    charged = []
    real = _shared._Interpreter._charge
    monkeypatch.setattr(_shared._Interpreter, "_charge",
                        lambda self, items: (charged.append(items), real(self, items)))
    side = "(@" + " | [@, @]" * 12 + ")"
    expression_search(side, 1)
    building = sum(charged)
    charged.clear()
    assert expression_search(f"{side} == {side}", 1) is True
    assert sum(charged) == 2 * building + 12 * 2  # both sides built, then 12 pairs of 2
    for expression in (f"{BUILT_APART} == {BUILT_APART}", f"contains([{BUILT_APART}], "
                       f"{BUILT_APART})", f"{BUILT_APART} != {BUILT_APART}"):
        assert expression_search(expression, 1) is ("!=" not in expression)


@pytest.mark.parametrize("expression", [
    "a == b", "a != b", "a == c", "b == c", "d == e", "d == f", "g == h", "g == i",
    "`1` == `true`", "[`1`] == [`true`]", "`1` == `1.0`", "`{}` == `[]`", "`[]` == `[]`",
    "contains(l, a)", "contains(l, g)", "contains(l, `[1, [2, 3]]`)", "contains('abc', 'b')",
    "l[?@ == `[1, [2, 3]]`]", "a == `null`", "x == `null`", "[a, b] == [b, a]",
    "to_number('nan') | @ == @", "to_number('nan') | [@] == [@]", "a != a",
    "contains(`[1, 2]`, `true`)", "contains(`[true]`, `1`)", "contains(`[false]`, `0`)",
    "contains(`[0]`, `false`)", "contains(`[[1]]`, `[true]`)", "contains(`[1.0]`, `1`)",
    "to_number('nan') | contains([@], @)", "to_number('nan') | contains([[@]], [@])",
    "contains(`[{\"a\": [1]}]`, `{\"a\": [1]}`)",
])
def test_equality_means_what_jmespath_means(expression):
    import jmespath

    from workflows.kinds._shared import expression_search

    data = {"a": [1, [2, 3]], "b": [1, [2, 3]], "c": [1, [2, 4]], "d": {"x": 1, "y": [1]},
            "e": {"y": [1], "x": 1}, "f": {"x": 1, "z": [1]}, "g": "s", "h": "s", "i": "t",
            "l": ["s", 1, [1, [2, 3]], {"k": True}]}
    assert expression_search(expression, data) == jmespath.search(expression, data)


def test_an_item_comparing_values_built_apart_completes(cast):
    workflow = make_workflow(cast.org_a, [("transform", {
        "expression": f"{{same: {BUILT_APART} == {BUILT_APART}}}"})])
    item = _run(workflow, "ab")
    assert (item.status, item.output) == ("completed", {"same": True}), item.error


def test_a_flatten_is_refused_before_it_copies(monkeypatch):
    from workflows.kinds import _shared
    from workflows.kinds._shared import ExpressionTooLarge, expression_search

    monkeypatch.setattr(_shared, "EXPRESSION_MAX_ITEMS", 100)
    with pytest.raises(ExpressionTooLarge, match="a flatten would build 120 items"):
        expression_search("[l, l][]", {"l": list(range(60))})
    assert expression_search("[l, l][]", {"l": list(range(40))}) == list(range(40)) * 2


@pytest.mark.parametrize(("expression", "input"), [
    (f"abs({DOUBLED})", "ab"),  # jmespath's message would quote the whole value
    ('abs(`"a\\u0000b"`)', {}),  # and a NUL, which no column stores
], ids=["huge-value", "nul"])
def test_an_expression_error_names_the_type_not_the_value(cast, expression, input):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": expression})])
    item = _run(workflow, input)
    assert (item.status, item.error["code"]) == ("failed", "bad_expression")
    assert item.error["message"].startswith("jmespath error: in function abs(), expected one")
    assert len(item.error["message"]) < 300 and "\x00" not in item.error["message"]


def test_any_failure_message_is_made_storable_and_bounded(cast, monkeypatch):
    """Whatever a step kind says in a failure is stored: NUL and unpaired surrogates become
    U+FFFD and a long message is cut, so one item's failure never rolls back a batch."""
    from workflows.kinds.base import Fail
    from workflows.kinds.transform import Transform

    monkeypatch.setattr(Transform, "execute", lambda self, ctx: Fail(
        "step_error", "bad\x00thing \ud800 " + "x" * 10_000, {"v": float("nan")}))
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    with transaction.atomic():
        items = [work_item_create(workflow=workflow, input={}) for _ in range(3)]
    assert work_drain(budget=30, batch=10) == 3
    for item in items:
        item.refresh_from_db()
        assert item.status == "failed"
        message = item.error["message"]
        assert message.startswith("bad\ufffdthing \ufffd x") and message.endswith("… (cut)")
        assert len(message) < 2100 and "v" not in item.error
