"""Refuse to start with a django-q2 configuration that would lose or duplicate work
(`workflows.E001`-`E004`), and warn about an operator default a step inherits that run time
would cut (`workflows.W001`-`W003`: `inherited_defaults_check`).

These live here, not in auxot/checks.py: the caps are the engine's (`step_timeout_max`,
`MAX_STEP_ATTEMPTS`), and auxot never imports the apps above it."""

from collections.abc import Callable
from typing import NamedTuple

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def q_cluster_is_safe(app_configs, **kwargs) -> list[Error]:
    conf = settings.Q_CLUSTER
    errors = []
    timeout, retry = conf.get("timeout"), conf.get("retry")
    if timeout is None or retry is None or timeout >= retry:
        errors.append(Error(
            "Q_CLUSTER['timeout'] must be set and below Q_CLUSTER['retry'], or a running task "
            "is handed to a second worker.", id="workflows.E001"))
    if conf.get("max_attempts", 0) < 1:
        errors.append(Error(
            "Q_CLUSTER['max_attempts'] must be at least 1: 0 retries a failing task forever.",
            id="workflows.E002"))
    if not conf.get("ack_failures"):
        errors.append(Error(
            "Q_CLUSTER['ack_failures'] must be True so failed tasks leave the queue; the "
            "engine's sweeper owns retries.", id="workflows.E003"))
    step_timeout = settings.AUXOT_STEP_TIMEOUT_SECONDS + settings.AUXOT_LEASE_GRACE_SECONDS
    if timeout is not None and timeout <= step_timeout:
        errors.append(Error(
            f"AUXOT_TASK_TIMEOUT_SECONDS ({timeout}, django-q2's task timeout) must exceed "
            f"AUXOT_STEP_TIMEOUT_SECONDS + AUXOT_LEASE_GRACE_SECONDS ({step_timeout}), or "
            "django-q2 kills a step the engine still owns.",
            id="workflows.E004"))
    return errors


# Every operator default a step inherits when its own setting is empty, with the cap run
# time holds it to. An inherited default above its cap is silently cut on every such
# step, so startup warns, naming both. tests/workflows/test_inherited_defaults_check.py
# finds the defaults in the source (`<setting field> or settings.X`,
# `config.get(name, settings.X)`): a new one fails there until it is listed here.
def _step_timeout() -> tuple[float, str]:
    from workflows.models import step_timeout_max

    return (min(settings.AUXOT_STEP_TIMEOUT_SECONDS, step_timeout_max()),
            "the timeout of a step whose Timeout seconds is empty "
            "(AUXOT_STEP_TIMEOUT_SECONDS, itself at most AUXOT_TASK_TIMEOUT_SECONDS - "
            "AUXOT_LEASE_GRACE_SECONDS - 10)")


def _step_timeout_max() -> tuple[float, str]:
    from workflows.models import step_timeout_max

    return (step_timeout_max(), "the longest a step may run (AUXOT_TASK_TIMEOUT_SECONDS - "
                                "AUXOT_LEASE_GRACE_SECONDS - 10)")


def _attempts_max() -> tuple[float, str]:
    from workflows.models import MAX_STEP_ATTEMPTS

    return MAX_STEP_ATTEMPTS, "the most attempts a step may make"


class Inherited(NamedTuple):
    who: str  # the steps that inherit the default
    cap: Callable[[], tuple[float, str]]  # the cap now, and how it is worked out
    id: str


INHERITED_DEFAULTS: dict[str, Inherited] = {
    "AUXOT_HTTP_TIMEOUT_SECONDS": Inherited(
        "an http step whose config names no timeout_seconds", _step_timeout,
        id="workflows.W001"),
    "AUXOT_STEP_TIMEOUT_SECONDS": Inherited(
        "a step whose Timeout seconds is empty", _step_timeout_max, id="workflows.W002"),
    "AUXOT_STEP_MAX_ATTEMPTS": Inherited(
        "a step whose Max attempts is empty", _attempts_max, id="workflows.W003"),
}


@register()
def inherited_defaults_check(app_configs=None, **kwargs) -> list[Warning]:
    warnings = []
    for name, inherited in INHERITED_DEFAULTS.items():
        value = getattr(settings, name)
        cap, why = inherited.cap()
        who = inherited.who
        if value > cap:
            warnings.append(Warning(
                f"{name}={value:g} is above {why}: {cap:g}. {who[0].upper()}{who[1:]} "
                f"inherits {name}, and run time cuts it to {cap:g}.",
                hint=f"Lower {name} to at most {cap:g}, or raise the cap.", id=inherited.id))
    return warnings
