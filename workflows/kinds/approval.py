"""`approval`: a person approves or rejects; the item waits holding no worker."""

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_datetime

from auxot.timefmt import iso
from workflows.kinds._shared import config_failure
from workflows.kinds.base import (
    UNCAPPED,
    Complete,
    Fail,
    Outcome,
    StepContext,
    StepKind,
    Wait,
)

NO_DEADLINE = timedelta(days=3650)
MAX_DEADLINE_SECONDS = 90 * 24 * 3600
# Copied into every waiting item's state and poll (a wait's detail holds at most 64 KiB:
# longer instructions failed each item with a `step_error` that did not say why).
MAX_INSTRUCTIONS_CHARS = 4000


class Approval(StepKind):
    """config: {"instructions": "...", "deadline_seconds": N (optional)}.

    Waits until `work_item_decide` records a decision in the step's state and wakes the
    item; past the deadline it fails with `approval_timeout`.
    """

    name = "approval"
    label = "Approval (human)"
    numeric_settings = {"deadline_seconds": UNCAPPED}  # the wait holds no worker
    # A decision is recorded once (an Approval row refuses a second one, and a cancel): a
    # worker lost while applying it must apply it again, not ask anew for one.
    resumes_after_crash = True

    def validate_config(self, config: dict) -> None:
        if not isinstance(config.get("instructions", ""), str):
            raise ValidationError({"config": "instructions must be a string."})
        if len(config.get("instructions", "")) > MAX_INSTRUCTIONS_CHARS:
            raise ValidationError({"config": f"instructions: at most {MAX_INSTRUCTIONS_CHARS:,} "
                                             "characters (every waiting item carries them)."})
        deadline = config.get("deadline_seconds")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(
                deadline, int | float) or not 0 < deadline <= MAX_DEADLINE_SECONDS):
            raise ValidationError({"config": "deadline_seconds must be 0 < n <= 90 days."})

    def typed_credential_advice(self, path: str) -> str:
        if path.split(".")[0] != "instructions":
            return super().typed_credential_advice(path)
        return ("The instructions are shown to whoever decides, in the admin and in the "
                "poll, and an approval cannot use an organization secret: remove it.")

    def execute(self, ctx: StepContext) -> Outcome:
        if failure := config_failure(self, ctx.config):
            return failure
        seconds = ctx.config.get("deadline_seconds")
        deadline = ctx.now + timedelta(seconds=seconds) if seconds else None
        return Wait(deadline or ctx.now + NO_DEADLINE, "approval", {
            "deadline": iso(deadline), "instructions": ctx.config.get("instructions", ""),
        })

    def resume(self, ctx: StepContext) -> Outcome:
        decision = ctx.state.get("decision")
        if decision == "approve":
            return Complete({key: ctx.state.get(key)
                             for key in ("decision", "decided_by", "decided_at", "comment")})
        if decision == "reject":
            comment = ctx.state.get("comment") or "no comment"
            return Fail("rejected", f"Rejected by {ctx.state.get('decided_by')}: {comment}")
        deadline = parse_datetime(ctx.state.get("deadline") or "")
        if deadline is not None and ctx.now >= deadline:
            return Fail("approval_timeout", f"Nobody approved step '{ctx.step_name}' before "
                                            f"its deadline {iso(deadline)}.")
        return Wait(deadline or ctx.now + NO_DEADLINE, "approval", ctx.state)
