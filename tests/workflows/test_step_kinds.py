"""The step-kind registry: one list that the model, the admin, validation and the engine read;
kinds reach the database only through what the engine hands them."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.conftest import make_workflow
from workflows.batch import work_item_process
from workflows.kinds import REGISTRY, Complete, Fail, StepContext, StepKind, Wait, kind_choices
from workflows.kinds.agent import Agent
from workflows.models import Step
from workflows.services import work_item_create


class Echo(StepKind):
    name = "echo"
    label = "Echo (test)"

    def validate_config(self, config: dict) -> None:
        if "say" not in config:
            raise ValidationError({"config": 'An echo needs {"say": ...}.'})

    def execute(self, ctx: StepContext):
        return Complete({"said": ctx.config["say"], "input": ctx.data["input"]})


@pytest.fixture
def echo_kind(monkeypatch):
    monkeypatch.setitem(REGISTRY, Echo.name, Echo())


def test_step_kind_choices_are_the_registry():
    field = Step._meta.get_field("kind")
    assert field.choices == kind_choices()
    assert [name for name, _ in kind_choices()] == [
        "transform", "delay", "http", "approval", "agent"]


def test_a_registered_kind_is_validated_offered_and_run(cast, echo_kind):
    wf = make_workflow(cast.org_a, [("echo", {"say": "hi"})])
    step = Step.objects.get(workflow=wf)
    step.full_clean()
    assert ("echo", "Echo (test)") in Step._meta.get_field("kind").choices
    step.config = {}
    with pytest.raises(ValidationError, match="An echo needs"):
        step.full_clean()
    item = work_item_create(workflow=wf, input={"n": 1})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert (item.status, item.output) == ("completed", {"said": "hi", "input": {"n": 1}})


def test_an_unregistered_kind_is_refused_when_saved(cast):
    wf = make_workflow(cast.org_a, [])
    step = Step(workflow=wf, position=1, name="x", kind="echo", config={})
    with pytest.raises(ValidationError) as caught:
        step.full_clean()
    assert "kind" in caught.value.error_dict


class Gate:
    """A provider gate as the engine builds it, without the database."""

    def __init__(self, provider=None, granted=True):
        self.provider, self.granted, self.calls = provider, granted, []

    def find(self, name):
        self.calls.append(("find", name))
        return self.provider

    def acquire(self, provider, *, ahead_counted=0):
        self.calls.append(("acquire", provider))
        gate = self

        class Slot:
            granted = gate.granted

            def detail(self):
                return {"provider": "p", "ahead": 2}

        return Slot()

    def release(self, provider):
        self.calls.append(("release", provider))


def _agent_ctx(gate):
    return StepContext(data={"input": {}}, config={"provider": "p", "prompt": "hi"}, state={},
                       now=timezone.now(), providers=gate)


def test_agent_without_a_provider_fails_provider_missing():
    outcome = Agent().execute(_agent_ctx(Gate(provider=None)))
    assert isinstance(outcome, Fail) and outcome.code == "provider_missing"
    outcome = Agent().execute(_agent_ctx(None))
    assert isinstance(outcome, Fail) and outcome.code == "provider_missing"


def test_agent_waits_for_a_slot_the_gate_refuses_and_takes_nothing_to_release():
    provider = SimpleNamespace(concurrency_limit=1)
    gate = Gate(provider=provider, granted=False)
    ctx = _agent_ctx(gate)
    outcome = Agent().execute(ctx)
    assert isinstance(outcome, Wait) and outcome.waiting_on == "provider"
    assert outcome.detail == {"provider": "p", "ahead": 2}
    assert outcome.until > ctx.now and outcome.until - ctx.now < timedelta(hours=1)
    assert gate.calls == [("find", "p"), ("acquire", provider)]


def test_every_code_a_step_fails_with_is_named_in_the_readme():
    """A failed item's `error.code` is what a caller branches on: `bad_config` (a config
    that no longer passes its kind's rules, checked again at run time) was named nowhere."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    codes = {code for path in (root / "workflows").rglob("*.py") if "migrations" not in path.parts
             for pair in re.findall(r'Fail\(\s*(?:code=)?"([a-z_]+)"|"code": "([a-z_]+)"',
                                    path.read_text()) for code in pair if code}
    codes |= {"ssrf_refused"}  # config_failure's other branch, chosen by a condition
    # A kind's retry codes: an attempt's that is retried, the step's once none is left.
    codes |= {code for kind in REGISTRY.values() if kind.retry_codes
              for code in (kind.retry_codes.attempt, kind.retry_codes.exhausted)}
    assert "http_unavailable" in codes
    assert {"bad_config", "step_crashed", "bad_expression", "http_error"} <= codes
    assert sorted(code for code in codes if f"`{code}`" not in readme) == []
