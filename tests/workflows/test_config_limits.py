"""Sizes of what an org admin types into a step, in every field that holds an expression
(and an approval's instructions): refused when saved, and failing the step, saying which
limit, when a step saved before runs."""

import pytest
from django.core.exceptions import ValidationError

from tests.conftest import make_workflow
from workflows.batch import work_item_process
from workflows.kinds import kind_get
from workflows.kinds._shared import EXPRESSION_MAX_CHARS
from workflows.kinds.approval import MAX_INSTRUCTIONS_CHARS
from workflows.models import Step, WorkItem
from workflows.services import work_item_create

# Every field of every kind that holds a jmespath expression (a placeholder, in a template).
EXPRESSION_FIELDS = {
    "transform expression": ("transform", lambda e: {"expression": e}),
    "http url_expression": ("http", lambda e: {"url_expression": e}),
    "http header": ("http", lambda e: {"url_expression": "'x'", "headers": {"X-A": e}}),
    "http body": ("http", lambda e: {"url_expression": "'x'", "body": e}),
    "agent prompt": ("agent", lambda e: {"provider": "p", "prompt": "{{ " + e + " }}"}),
    "agent system": ("agent", lambda e: {"provider": "p", "prompt": "hi",
                                         "system": "{{ " + e + " }}"}),
}
HOSTILE = {
    "long": ("input" + ".b" * EXPRESSION_MAX_CHARS, f"longer than {EXPRESSION_MAX_CHARS:,}"),
    "deep": ("(" * 3000 + "input" + ")" * 3000, "nested too deeply"),
}
CASES = [(f, h) for f in EXPRESSION_FIELDS for h in HOSTILE]


def test_the_fields_cover_every_kind_that_takes_expressions():
    assert {kind for kind, _ in EXPRESSION_FIELDS.values()} == {"transform", "http", "agent"}


@pytest.mark.parametrize(("field", "hostile"), CASES)
def test_an_expression_past_a_limit_is_refused_when_saved(field, hostile):
    kind, config = EXPRESSION_FIELDS[field]
    expression, message = HOSTILE[hostile]
    with pytest.raises(ValidationError, match=message):
        kind_get(kind).validate_config(config(expression))
    kind_get(kind).validate_config(config("input" + ".b" * 100))  # an ordinary one


def _run_saved_before(cast, kind: str, config: dict) -> WorkItem:
    wf = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Older")
    Step.objects.filter(workflow=wf).update(kind=kind, config=config)  # as saved before
    item = work_item_create(workflow=wf, input={"b": 1})
    work_item_process(work_id=item.pk, drain_seconds=0)
    return WorkItem.objects.get(pk=item.pk)


@pytest.mark.parametrize(("field", "hostile"), CASES)
def test_an_expression_saved_before_fails_its_step_naming_the_limit(cast, field, hostile):
    kind, config = EXPRESSION_FIELDS[field]
    expression, message = HOSTILE[hostile]
    item = _run_saved_before(cast, kind, config(expression))
    assert item.status == WorkItem.Status.FAILED
    assert item.error["code"] in ("bad_expression", "bad_config")
    assert message in item.error["message"]


def test_approval_instructions_are_bounded_when_saved_and_when_run(cast):
    approval = kind_get("approval")
    approval.validate_config({"instructions": "x" * MAX_INSTRUCTIONS_CHARS})
    with pytest.raises(ValidationError, match=f"at most {MAX_INSTRUCTIONS_CHARS:,}"):
        approval.validate_config({"instructions": "x" * (MAX_INSTRUCTIONS_CHARS + 1)})
    item = _run_saved_before(cast, "approval", {"instructions": "x" * 100_000})
    assert (item.status, item.error["code"]) == (WorkItem.Status.FAILED, "bad_config")
    assert f"at most {MAX_INSTRUCTIONS_CHARS:,} characters" in item.error["message"]
