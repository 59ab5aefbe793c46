"""What a workflow author sets is what runs: every numeric setting of a step's config, and of
a Step or a Provider, that run time cuts is refused above its cap when saved, naming the
cap, or is documented as capped where it is set (the admin's help under the field).

An `http` step's `timeout_seconds` was accepted up to 600 and cut at run time to the step's
timeout (60 s by default); a provider's timeout was cut to its agent step's. The kinds may
not import the models, so Step.clean works the caps out (`RunLimits`) and hands them in."""

import inspect
import re

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models

from tests.conftest import make_workflow
from workflows.kinds import REGISTRY
from workflows.kinds.base import STEP_TIMEOUT, UNCAPPED
from workflows.models import (
    MAX_STEP_ATTEMPTS,
    Provider,
    Step,
    numeric_field_help,
    step_timeout_max,
)

# A valid config of each kind, to which one setting at a time is added. A new kind needs one
# here: the enumeration below cannot look at it otherwise.
SAMPLES = {
    "transform": {"expression": "input"},
    "delay": {"seconds": 1},
    "http": {"method": "POST", "url": "http://127.0.0.1:9/hook"},
    "approval": {"instructions": "Look."},
    "agent": {"provider": "main", "prompt": "Hello {{ input.name }}"},
}


class _Recording(dict):
    """A config that remembers every key its kind asks it for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def _accepts(kind, config: dict) -> bool:
    try:
        kind.validate_config(config)
    except ValidationError:
        return False
    return True


def _settings_of(kind) -> set[str]:
    """Every key the kind reads from a config: asked by its validate_config, or named in
    its module (`config.get("x")`, `config["x"]`, as the engine's context hands it)."""
    recording = _Recording(SAMPLES[kind.name])
    kind.validate_config(recording)
    source = inspect.getsource(inspect.getmodule(type(kind)))
    named = re.findall(r"config(?:\.get\(|\[)\s*\"(\w+)\"", source)
    return recording.asked | set(named)


def _numeric_settings_found(kind) -> set[str]:
    """The settings validate_config accepts a number for."""
    return {name for name in _settings_of(kind)
            if any(_accepts(kind, {**SAMPLES[kind.name], name: value})
                   for value in (1, 30, 10**6))}


def test_every_kind_has_a_sample():
    assert set(SAMPLES) == set(REGISTRY)
    for name, kind in REGISTRY.items():
        assert _accepts(kind, SAMPLES[name]), name


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_numeric_setting_of_a_kind_says_what_run_time_holds_it_to(name):
    """A numeric setting not in `numeric_settings` has not been looked at: does run time
    cut it? If so it must be refused above its cap when saved (STEP_TIMEOUT), else it is
    UNCAPPED (used as saved, within validate_config's bounds)."""
    kind = REGISTRY[name]
    assert _numeric_settings_found(kind) == set(kind.numeric_settings), name
    assert set(kind.numeric_settings.values()) <= {STEP_TIMEOUT, UNCAPPED}


CAPPED = [(name, setting) for name, kind in sorted(REGISTRY.items())
          for setting, cap in kind.numeric_settings.items() if cap == STEP_TIMEOUT]


def test_the_http_timeout_is_one_of_them():
    assert ("http", "timeout_seconds") in CAPPED


def _step(cast, kind: str, config: dict, timeout_seconds=None) -> Step:
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})])
    return Step(workflow=workflow, position=2, name="capped", kind=kind, config=config,
                timeout_seconds=timeout_seconds)


@pytest.mark.parametrize(("kind", "setting"), CAPPED)
def test_a_setting_cut_at_the_steps_timeout_is_refused_above_it_naming_it(
        cast, settings, kind, setting):
    settings.AUXOT_STEP_TIMEOUT_SECONDS = 60
    step = _step(cast, kind, {**SAMPLES[kind], setting: 61})
    with pytest.raises(ValidationError) as refused:
        step.full_clean()
    said = " ".join(refused.value.messages)
    assert f"{setting}: at most 60 seconds, this step's timeout" in said
    assert "at least 61 seconds" in said
    step.config[setting] = 60  # at the cap: what was set is what runs
    step.full_clean()
    step.timeout_seconds = 61  # or the step's own timeout raised to it
    step.config[setting] = 61
    step.full_clean()
    step.timeout_seconds = step_timeout_max()  # never past what a task may run
    step.config[setting] = step_timeout_max() + 1
    with pytest.raises(ValidationError, match=f"No step runs longer than {step_timeout_max()}"):
        step.full_clean()


def test_a_step_saved_before_runs_capped_and_its_config_still_runs(cast):
    """Only a save is refused: at run time validate_config (not validate_limits) decides."""
    kind = REGISTRY["http"]
    assert kind.validate_config({**SAMPLES["http"], "timeout_seconds": 500}) is None


def test_an_agent_step_shorter_than_its_providers_timeout_is_refused(cast, settings):
    settings.AUXOT_STEP_TIMEOUT_SECONDS = 60
    Provider.objects.create(org=cast.org_a, name="main", base_url="https://a.example/v1",
                            model="m", timeout_seconds=120)
    step = _step(cast, "agent", SAMPLES["agent"])
    with pytest.raises(ValidationError) as refused:
        step.full_clean()
    said = " ".join(refused.value.messages)
    assert "'main' waits up to 120 seconds" in said
    assert "cut at 60 seconds" in said
    step.timeout_seconds = 120
    step.full_clean()
    step.timeout_seconds = None
    Provider.objects.filter(name="main").update(active=False)  # not the one it would call
    step.full_clean()


# Each numeric field of a Step or a Provider: the value save refuses (its cap), or None for
# one run time never cuts. A new field without an entry fails below.
MODEL_CAPS = {
    "Step.position": None,
    "Step.timeout_seconds": lambda: step_timeout_max() + 1,
    "Step.max_attempts": lambda: MAX_STEP_ATTEMPTS + 1,
    "Provider.timeout_seconds": lambda: step_timeout_max() + 1,
    "Provider.concurrency_limit": None,
}


def _numeric_fields() -> set[str]:
    return {f"{model.__name__}.{field.name}" for model in (Step, Provider)
            for field in model._meta.get_fields()
            if isinstance(field, models.IntegerField | models.FloatField | models.DecimalField)
            and not isinstance(field, models.AutoField | models.ForeignKey)}


def test_every_numeric_field_of_a_step_or_provider_is_accounted_for():
    assert _numeric_fields() == set(MODEL_CAPS)


def _instance(cast, model: str):
    if model == "Step":
        return _step(cast, "transform", {"expression": "input"})
    return Provider(org=cast.org_a, name="p", base_url="https://a.example/v1", model="m")


@pytest.mark.parametrize("name", sorted(k for k, cap in MODEL_CAPS.items() if cap))
def test_a_capped_field_is_refused_above_its_cap_naming_it(cast, name):
    model, field = name.split(".")
    instance = _instance(cast, model)
    setattr(instance, field, MODEL_CAPS[name]())
    with pytest.raises(ValidationError) as refused:
        instance.full_clean()
    assert f"At most {MODEL_CAPS[name]() - 1}" in " ".join(
        refused.value.message_dict[field])
    setattr(instance, field, MODEL_CAPS[name]() - 1)
    instance.full_clean()


@pytest.mark.parametrize("name", sorted(MODEL_CAPS))
def test_the_admin_shows_each_numeric_fields_caps_where_it_is_set(name, settings):
    from workflows.admin import StepInline

    model_name, field = name.split(".")
    model = {"Step": Step, "Provider": Provider}[model_name]
    owner = (StepInline(Step.workflow.field.related_model, admin.site) if model is Step
             else admin.site._registry[Provider])
    shown = owner.formfield_for_dbfield(model._meta.get_field(field), request=None).help_text
    assert shown == numeric_field_help()[name]
    if MODEL_CAPS[name]:
        assert f"At most {MODEL_CAPS[name]() - 1}" in shown.replace("at most", "At most")

