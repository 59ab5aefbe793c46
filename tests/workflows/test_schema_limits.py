"""A JSON Schema check is bounded (workflows/handoffs.py): an org admin writes the schema, a
caller (a trigger's body) or a tenant's server (a step's output) the value. No test here is
timed: each hostile case would run for hours (or forever) without its bound."""

import json

import jsonschema._keywords
import jsonschema._utils
import pytest
from django.core.exceptions import ValidationError

from intakes.services import intake_create
from tests.conftest import make_workflow, trigger
from workflows import handoffs
from workflows.batch import work_item_process
from workflows.handoffs import schema_check, violations
from workflows.models import Step, WorkItem

EXPLOSIVE = "^(a|a)*$"  # Python's re: time doubling per character of a non-matching text
LOOKAHEAD = "^(?=a)a+$"  # RE2 cannot match it: a schema saved before the rule


def _pattern_schemas(pattern: str) -> dict[str, tuple[dict, object]]:
    """Every keyword through which jsonschema matches a pattern, with a value it checks."""
    text = "a" * 5000 + "!"
    return {
        "pattern": ({"pattern": pattern}, text),
        "patternProperties": ({"patternProperties": {pattern: {"type": "integer"}}},
                              {text: "x"}),
        "additionalProperties": ({"patternProperties": {pattern: {}},
                                  "additionalProperties": False}, {text: 1}),
        "unevaluatedProperties": ({"patternProperties": {pattern: {}},
                                   "unevaluatedProperties": False}, {text: 1}),
        "propertyNames": ({"propertyNames": {"pattern": pattern}}, {text: 1}),
        "nested under $ref": ({"$defs": {"p": {"pattern": pattern}}, "$ref": "#/$defs/p"},
                              text),
    }


def test_jsonschemas_pattern_matching_is_ours():
    """Every module of jsonschema that matches a pattern reads our `re`: should a version
    match some other way, the cases below would run Python's re and never end."""
    assert isinstance(jsonschema._keywords.re, handoffs._PatternSearch)
    assert isinstance(jsonschema._utils.re, handoffs._PatternSearch)


@pytest.mark.parametrize("keyword", list(_pattern_schemas(EXPLOSIVE)))
def test_every_pattern_keyword_matches_in_linear_time(keyword):
    schema, value = _pattern_schemas(EXPLOSIVE)[keyword]
    found = violations(value, schema)
    # The real answer: the text does not match (so patternProperties checks nothing).
    assert bool(found) is (keyword != "patternProperties")
    assert not any("too costly" in v["message"] for v in found)


@pytest.mark.parametrize("keyword", list(_pattern_schemas(LOOKAHEAD)))
def test_a_stored_pattern_re2_cannot_match_refuses_the_value_saying_why(keyword):
    schema, value = _pattern_schemas(LOOKAHEAD)[keyword]
    [found] = violations(value, schema)
    assert "(?=a)" in found["message"] and "bounded time" in found["message"]


def test_patterns_elsewhere_are_pythons():
    # Another library's jsonschema check (an OpenAPI validator) is not ours to change.
    assert jsonschema._keywords.re.search(LOOKAHEAD, "aa")


@pytest.mark.parametrize("keyword", list(_pattern_schemas(LOOKAHEAD)))
def test_a_pattern_re2_cannot_match_is_refused_when_saved(cast, keyword):
    schema = _pattern_schemas(LOOKAHEAD)[keyword][0]
    with pytest.raises(ValidationError, match="bounded time"):
        schema_check(schema, field="input_schema")
    wf = make_workflow(cast.org_a, [], name="Patterns")
    wf.input_schema = schema
    with pytest.raises(ValidationError, match="bounded time"):
        wf.full_clean()
    step = Step(workflow=wf, position=1, name="s", kind="transform",
                config={"expression": "input"}, output_schema=schema)
    with pytest.raises(ValidationError, match="bounded time"):
        step.full_clean()


def test_a_pattern_in_a_value_is_not_taken_for_one():
    schema_check({"const": {"pattern": LOOKAHEAD}, "default": {"pattern": "(?<=x)"}},
                 field="input_schema")


def test_unique_items_hashes_each_item_once():
    distinct = [{"id": i, "tags": [i, str(i)]} for i in range(50_000)]
    assert violations(distinct, {"uniqueItems": True}) == []
    [found] = violations([*distinct, {"tags": [7, "7"], "id": 7}], {"uniqueItems": True})
    assert "item 50000 repeats" in found["message"]


@pytest.mark.parametrize(("items", "unique"), [
    ([1, 1.0], False), ([True, 1], True), ([False, 0, None], True), (["1", 1], True),
    ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False), ([[1, [2]], [1, [2.0]]], False),
    ([[True], [1]], True), ([{"a": [1]}, {"a": [1, 1]}], True),
])
def test_unique_items_means_what_json_schema_means(items, unique):
    assert (violations(items, {"uniqueItems": True}) == []) is unique


def test_branches_that_fail_at_every_level_are_cut_at_the_limit(monkeypatch):
    # Two anyOf branches that fail at the bottom: 2^depth checks.
    monkeypatch.setattr(handoffs, "SCHEMA_MAX_STEPS", 10_000)
    branch = {"type": "array", "items": {"$ref": "#/$defs/n"}}
    schema = {"$defs": {"n": {"anyOf": [branch, branch]}}, "$ref": "#/$defs/n"}
    value = json.loads("[" * 40 + "1" + "]" * 40)
    found = violations(value, schema)
    assert "more than 10,000 steps" in found[-1]["message"]
    assert "refused unchecked" in found[-1]["message"]


def test_an_enum_scanned_per_item_is_counted(monkeypatch):
    monkeypatch.setattr(handoffs, "SCHEMA_MAX_STEPS", 100_000)
    schema = {"items": {"enum": list(range(10_000))}}
    assert "too costly" in violations([-1] * 100, schema)[-1]["message"]


def test_messages_built_are_counted_and_each_is_cut(monkeypatch):
    value = ["x" * 1000] * 100  # every violation quotes the value whole
    found = violations(value, {"allOf": [{"type": "object"}] * 60})
    assert len(found) == handoffs.MAX_VIOLATIONS
    assert all(len(v["message"]) <= handoffs.VIOLATION_MESSAGE_MAX_CHARS + 10 for v in found)
    monkeypatch.setattr(handoffs, "SCHEMA_MAX_MESSAGE_CHARS", 1_000_000)
    found = violations(value, {"allOf": [{"type": "object"}] * 60})
    assert "characters of messages" in found[-1]["message"]


def test_violations_found_are_bounded_before_they_are_sorted():
    found = violations(list(range(200_000)), {"items": {"type": "string"}})
    assert len(found) == handoffs.MAX_VIOLATIONS


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
])
def test_a_ref_loop_refuses_the_value_instead_of_raising(schema):
    [found] = violations({}, schema)
    assert "$ref loop" in found["message"]


def _intake(cast, schema, steps=(("transform", {"expression": "input"}),)):
    wf = make_workflow(cast.org_a, list(steps), name="Bounded schema")
    wf.input_schema = schema
    wf.save()
    return intake_create(org=cast.org_a, workflow=wf, name="bounded")


def test_a_trigger_over_a_ref_loop_is_a_422_not_a_500(cast, api, member_token):
    intake = _intake(cast, {"$ref": "#"})
    response = trigger(api, intake.pk, member_token, body={"a": 1})
    assert response.status_code == 422
    assert "$ref loop" in response.json()["errors"][0]["message"]


def test_a_trigger_of_many_objects_against_unique_items_is_answered(cast, api, member_token):
    intake = _intake(cast, {"type": "array", "uniqueItems": True})
    response = trigger(api, intake.pk, member_token, body=[{"n": i} for i in range(40_000)])
    assert response.status_code == 202


def test_an_output_too_costly_to_check_fails_bad_handoff_saying_so(cast, api, member_token,
                                                                    monkeypatch):
    monkeypatch.setattr(handoffs, "SCHEMA_MAX_STEPS", 10_000)
    intake = _intake(cast, None, [("transform", {"expression": "input"})])
    branch = {"type": "array", "items": {"$ref": "#/$defs/n"}}
    Step.objects.filter(workflow=intake.workflow).update(
        output_schema={"$defs": {"n": {"anyOf": [branch, branch]}}, "$ref": "#/$defs/n"})
    response = trigger(api, intake.pk, member_token,
                       body=json.loads("[" * 40 + "1" + "]" * 40))
    work_item_process(work_id=response.json()["work_id"], drain_seconds=0)
    item = WorkItem.objects.get()
    assert item.error["code"] == "bad_handoff"
    assert "too costly to check" in item.error["message"]


def _large_schema() -> dict:
    return {"$defs": {f"d{i}": {"$anchor": f"a{i}", "type": "string"} for i in range(2000)},
            "$ref": "#a1999"}


def test_a_schema_larger_than_the_limit_is_refused_when_saved(cast):
    schema = _large_schema()
    assert len(json.dumps(schema)) > handoffs.SCHEMA_MAX_CHARS
    with pytest.raises(ValidationError, match=f"past {handoffs.SCHEMA_MAX_CHARS:,}"):
        schema_check(schema, field="input_schema")
    wf = make_workflow(cast.org_a, [], name="Large")
    wf.input_schema = schema
    with pytest.raises(ValidationError, match="characters as JSON"):
        wf.full_clean()
    step = Step(workflow=wf, position=1, name="s", kind="transform",
                config={"expression": "input"}, output_schema=schema)
    with pytest.raises(ValidationError, match="characters as JSON"):
        step.full_clean()


def test_a_schema_saved_larger_refuses_the_value_unchecked_saying_why(cast, api, member_token):
    intake = _intake(cast, _large_schema())  # saved before the limit
    response = trigger(api, intake.pk, member_token, body="x")
    assert response.status_code == 422
    assert "saved before that limit" in response.json()["errors"][0]["message"]
