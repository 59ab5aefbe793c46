"""What every step kind is made of: the context it runs in, the outcomes it returns, its base.

A kind does not write step results: the engine stores what the outcome says. That keeps
"exactly once per step" in one place (the engine). A kind never imports the models: what it
needs from the database (the agent's provider slots) the engine hands it in the context.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.core.exceptions import ValidationError

from auxot.credentials import credential_kinds_named
from auxot.outbound import urls_redacted
from workflows.kinds.typed import typed_credentials, typed_credentials_redacted


class ProviderSlot(Protocol):
    """The answer to "may I call the provider now?"; `detail()` says who is ahead if not."""

    granted: bool

    def detail(self) -> dict: ...


class ProviderGate(Protocol):
    """The organization's AI providers as an agent step sees them, for one work item."""

    def find(self, name: str) -> Any | None: ...

    def acquire(self, provider: Any, *, ahead_counted: int = 0) -> ProviderSlot: ...

    def release(self, provider: Any) -> None: ...


# What run time holds a numeric setting of a step's config to (`StepKind.numeric_settings`).
STEP_TIMEOUT = "step_timeout"  # cut to the attempt's timeout (the step's lease)
UNCAPPED = None  # used as saved, within the bounds validate_config gives it


@dataclass(frozen=True)
class RunLimits:
    """What run time holds a step to, worked out by whoever saves the step (Step.clean: a
    kind never imports the models) and handed to `StepKind.validate_limits`."""

    step_timeout: float  # seconds an attempt at this step may run: Step.timeout
    step_timeout_max: float  # the longest timeout any step may be given
    # The organization's active providers' timeouts by name (kinds that use providers).
    provider_timeouts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RetryCodes:
    """The error codes of a kind that retries (`_shared.retry`): `attempt`, what an attempt
    that is retried failed with (stored on that attempt, shown while the step is
    `retrying`); `exhausted`, what the step fails with once no attempt is left."""

    attempt: str
    exhausted: str


def number(value: Any) -> bool:
    """A JSON number (not true/false)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def retried_error(state: dict, codes: RetryCodes | None) -> dict:
    """The error of an attempt that failed and waits to be retried (`state`: its wait's
    detail): the code `_shared.retry` kept there (a wait stored before it did: the kind's
    attempt code, `codes`) and the reason."""
    code = state.get("code") or (codes.attempt if codes else "step_error")
    return {"code": code, "message": state.get("reason", "")}


def step_timeout_exceeded(seconds: float, limits: RunLimits) -> str:
    """Why `seconds` is refused for something run time cuts at the step's timeout."""
    said = (f"at most {limits.step_timeout:g} seconds, this step's timeout (its Timeout "
            "seconds, else AUXOT_STEP_TIMEOUT_SECONDS): run time cuts it there.")
    if seconds > limits.step_timeout_max:
        return said + (f" No step runs longer than {limits.step_timeout_max:g} seconds (a "
                       "worker's task is stopped at AUXOT_TASK_TIMEOUT_SECONDS).")
    return said + f" Give the step a timeout of at least {seconds:g} seconds, or ask for less."


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
    providers: ProviderGate | None = None  # given to kinds that declare `uses_providers`


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
    """One kind of step. `execute` starts an attempt; `resume` continues one that waited.

    `name` is what `Step.kind` stores; `label` is what the admin shows.
    """

    name: str
    label: str
    uses_providers: bool = False  # takes provider tickets: the engine drops them at the end
    # No outside effects (no network, no person): a drain runs such steps of many items back
    # to back and commits their results together (workflows/batch.py).
    pure: bool = False
    # Its resume has no outside effect and its waiting state holds what it waits for (a
    # person's recorded decision): a worker lost during a resume leaves the next attempt
    # that state to resume from, instead of starting the wait over and losing it.
    resumes_after_crash: bool = False
    # Every numeric setting of its config, by name: what run time holds it to (STEP_TIMEOUT,
    # or UNCAPPED). A setting run time cuts is refused above its cap when the step is saved
    # (`validate_limits`); tests/workflows/test_step_limits.py finds every numeric setting
    # a kind's validate_config accepts and fails on one missing here.
    numeric_settings: Mapping[str, str | None] = {}
    # A kind whose attempts may fail and be retried after a backoff says with what codes.
    retry_codes: RetryCodes | None = None

    @abstractmethod
    def validate_config(self, config: dict) -> None:
        """Raise ValidationError({"config": ...}) unless `config` is runnable."""

    def validate_limits(self, config: dict, limits: RunLimits) -> None:
        """Refuse, when the step is saved, a numeric setting that run time would silently
        cut, naming the real cap. Never checked at run time (a step saved before runs
        capped). `config` is valid already."""
        problems = []
        for name, cap in self.numeric_settings.items():
            value = config.get(name)
            if cap == STEP_TIMEOUT and number(value) and value > limits.step_timeout:
                problems.append(f"{name}: {step_timeout_exceeded(value, limits)}")
        if problems:
            raise ValidationError({"config": problems})

    def validate_references(self, config: dict, *, org_id: Any) -> None:
        """Checks that need the step's organization (secrets); `config` is valid already."""
        return None

    def validate_stored(self, config: dict) -> None:
        """Rules for what a step may store, checked when it is saved, never when it runs: a
        step saved before such a rule keeps running (a credential typed into its config
        instead of a secret reference); its page says what to change when it is next saved.
        `config` is valid already.

        Here, for every kind: no string of the config (at any depth, an expression's
        constants decoded) holds a credential known by its format (a GitHub or Auxot
        token, a private key, …: auxot/credentials.py). Each is named by its path and kind,
        never its value, with what this kind can do instead (`typed_credential_advice`).
        A kind with rules of its own calls this too."""
        problems = [f"{path}: {credential_kinds_named(kinds)} typed into the step is shown to "
                    f"everyone who may view the workflow. {self.typed_credential_advice(path)}"
                    for path, kinds in typed_credentials(config).items()]
        if problems:
            raise ValidationError({"config": problems})

    def typed_credential_advice(self, path: str) -> str:
        """What to do with a credential found at `path` of the config (one sentence or
        two): a kind that can send an organization secret says how."""
        return ("This kind of step cannot use an organization secret: remove it (an http "
                'step sends one with "secret_headers" or "url_secret").')

    def config_shown(self, config: dict) -> dict:
        """The config as shown to whoever may not change the workflow (members, auditors):
        every URL in it redacted (a chat webhook's path is its credential), and every
        credential `validate_stored` refuses (a step saved before it was) REDACTED. Only
        the form that edits it holds it whole."""
        return typed_credentials_redacted(urls_redacted(config))

    @abstractmethod
    def execute(self, ctx: StepContext) -> Outcome: ...

    def resume(self, ctx: StepContext) -> Outcome:
        return self.execute(ctx)
