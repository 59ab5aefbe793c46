"""`delay`: wait N seconds without holding a worker; passes `previous` through."""

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_datetime

from auxot.timefmt import iso
from workflows.kinds._shared import config_failure
from workflows.kinds.base import UNCAPPED, Complete, Outcome, StepContext, StepKind, Wait

MAX_DELAY_SECONDS = 7 * 24 * 3600


class Delay(StepKind):
    """config: {"seconds": N}."""

    name = "delay"
    pure = True
    label = "Delay"
    numeric_settings = {"seconds": UNCAPPED}  # the wait holds no worker
    # A worker lost while it ended the wait must not start the wait over (up to 7 days).
    resumes_after_crash = True

    def validate_config(self, config: dict) -> None:
        seconds = config.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValidationError({"config": 'A delay needs {"seconds": N}.'})
        if not 0 <= seconds <= MAX_DELAY_SECONDS:
            raise ValidationError({"config": f"seconds must be 0..{MAX_DELAY_SECONDS}."})

    def execute(self, ctx: StepContext) -> Outcome:
        if failure := config_failure(self, ctx.config):
            return failure
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
