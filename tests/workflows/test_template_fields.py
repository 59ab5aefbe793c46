"""An agent's `{{ <jmespath> }}` placeholders are found in one linear pass
(workflows/kinds/typed.py `template_fields`), exactly where the pattern that defines them
would find them. The pattern looked for the closing braces again from every `{{`: a prompt
of 20,000 of them took 20 s, and the admin's save, every run and the credential scan of
every string of every step kind ran it. No test here is timed: each hostile text below would
take the pattern hours."""

import contextlib
import random

import pytest
from django.core.exceptions import ValidationError

from workflows.kinds import kind_get
from workflows.kinds.agent import render_template
from workflows.kinds.typed import TEMPLATE_FIELD, template_fields, typed_credentials

EDGES = ["{{ a }}", "{{a}}", "{{ }}", "{{}}", "{{}}}", "{{ }}}", "{{\t\n}}", "{{\n}}",
         "{{ a\n}}", "{{ a\nb }}", "{{ a {{ b }}", "{{{ a }}}", "x {{ a }} y {{ b }} z",
         "{{ a\n{{ b }}", "{{ a {{\n b }}", "{{ \n a \n }}", "}}{{", "{{ a }}}} {{"]


def _by_pattern(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group(1)) for m in TEMPLATE_FIELD.finditer(text)]


@pytest.mark.parametrize("text", EDGES)
def test_placeholders_are_where_the_pattern_finds_them(text):
    assert template_fields(text) == _by_pattern(text)


def test_placeholders_are_where_the_pattern_finds_them_in_any_short_text():
    rng = random.Random(7)
    parts = ["{", "}", " ", "\n", "\t", "a", "{{", "}}"]
    for _ in range(20_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 16)))
        assert template_fields(text) == _by_pattern(text), repr(text)


HOSTILE = {
    "open braces": "{{" * 200_000,
    "placeholders cut by a line break": "{{ a" * 100_000 + "\n}}",
    "open braces before a close far away": "{{ x " * 100_000 + "}}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_every_use_of_placeholders_is_linear(name):
    text = HOSTILE[name]
    fields = template_fields(text)
    assert len(fields) <= 1
    agent = kind_get("agent")
    for config in ({"provider": "p", "prompt": text},
                   {"provider": "p", "prompt": "hi", "system": text}):
        with contextlib.suppress(ValidationError):  # a placeholder that is no expression
            agent.validate_config(config)
    if not fields:
        assert render_template(text, {"input": {}}) == text
    assert typed_credentials({"body": text, "instructions": text}) == {}


def test_rendering_replaces_each_placeholder_once():
    data = {"input": {"a": "A", "n": [1]}}
    assert render_template("{{ input.a }}-{{input.n}}-{{ input.a }}", data) == 'A-[1]-A'
    assert render_template("{{ input.a\n}}", data) == "A"  # spaces around it: any
    assert render_template("{{ input\n.a }} {{ input.a }}", data) == "{{ input\n.a }} A"
