"""Step kinds. Each kind validates its config and turns a context into an Outcome.

A kind does not write step results: the engine stores what the outcome says. That keeps
"exactly once per step" in one place (engine.py). The one exception is the agent kind's
provider slot (providers.py), which must be taken and given back around the call.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jmespath
from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_datetime
from jmespath.exceptions import JMESPathError

from auxot.timefmt import iso

MAX_DELAY_SECONDS = 7 * 24 * 3600


@dataclass
class StepContext:
    data: dict[str, Any]  # {"input": ..., "previous": ..., "steps": {name: output}}
    config: dict[str, Any]
    state: dict[str, Any]  # what the step stored when it last waited
    now: datetime
    step_name: str = ""
    idempotency_key: str = ""  # work id + step position, stable across attempts
    attempt: int = 1
    max_attempts: int = 1
    timeout_seconds: int = 60  # the step's lease: a call must finish well inside it
    work_id: Any = None
    org_id: Any = None


@dataclass
class Complete:
    output: Any


@dataclass
class Wait:
    until: datetime
    waiting_on: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fail:
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the item's error


Outcome = Complete | Wait | Fail


class StepKind(ABC):
    """Base class. `execute` starts an attempt; `resume` continues one that waited."""

    @abstractmethod
    def validate_config(self, config: dict) -> None: ...

    def validate_references(self, config: dict, *, org_id: Any) -> None:
        """Checks that need the step's organization (secrets); `config` is valid already."""
        return None

    @abstractmethod
    def execute(self, ctx: StepContext) -> Outcome: ...

    def resume(self, ctx: StepContext) -> Outcome:
        return self.execute(ctx)


class Transform(StepKind):
    """config: {"expression": "<jmespath>"} over {"input", "previous", "steps"}."""

    def validate_config(self, config: dict) -> None:
        expression = config.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            raise ValidationError({"config": 'A transform needs {"expression": "<jmespath>"}.'})
        try:
            jmespath.compile(expression)
        except JMESPathError as exc:
            raise ValidationError({"config": f"Invalid jmespath expression: {exc}"}) from None

    def execute(self, ctx: StepContext) -> Outcome:
        expression = ctx.config.get("expression")
        if not isinstance(expression, str):
            return Fail("bad_config", "The transform has no 'expression' in its config.")
        try:
            return Complete(jmespath.search(expression, ctx.data))
        except JMESPathError as exc:
            return Fail("bad_expression", f"jmespath error: {exc}")


class Delay(StepKind):
    """config: {"seconds": N}. Waits without holding a worker; passes `previous` through."""

    def validate_config(self, config: dict) -> None:
        seconds = config.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValidationError({"config": 'A delay needs {"seconds": N}.'})
        if not 0 <= seconds <= MAX_DELAY_SECONDS:
            raise ValidationError({"config": f"seconds must be 0..{MAX_DELAY_SECONDS}."})

    def execute(self, ctx: StepContext) -> Outcome:
        try:
            self.validate_config(ctx.config)
        except ValidationError as exc:
            return Fail("bad_config", "; ".join(exc.messages))
        until = ctx.now + timedelta(seconds=ctx.config["seconds"])
        if until <= ctx.now:
            return Complete(ctx.data.get("previous"))
        return Wait(until, "delay", {"seconds": ctx.config["seconds"], "until": iso(until)})

    def resume(self, ctx: StepContext) -> Outcome:
        until = parse_datetime(ctx.state.get("until", ""))
        if until is None:
            return self.execute(ctx)
        if ctx.now >= until:
            return Complete(ctx.data.get("previous"))
        return Wait(until, "delay", ctx.state)


from workflows.kinds_remote import Agent, Approval, Http  # noqa: E402

KINDS: dict[str, StepKind] = {
    "transform": Transform(),
    "delay": Delay(),
    "http": Http(),
    "approval": Approval(),
    "agent": Agent(),
}


def step_kind(kind: str) -> StepKind:
    return KINDS[kind]
