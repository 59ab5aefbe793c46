"""`transform`: one jmespath expression over {"input", "previous", "steps"}."""

from django.core.exceptions import ValidationError
from jmespath.exceptions import JMESPathError

from workflows.kinds._shared import expression_check, expression_error, expression_search
from workflows.kinds.base import Complete, Fail, Outcome, StepContext, StepKind


class Transform(StepKind):
    """config: {"expression": "<jmespath>"}."""

    name = "transform"
    pure = True
    label = "Transform (jmespath)"

    def validate_config(self, config: dict) -> None:
        if not isinstance(config.get("expression"), str) or not config["expression"].strip():
            raise ValidationError({"config": 'A transform needs {"expression": "<jmespath>"}.'})
        expression_check(config["expression"], "expression")

    def typed_credential_advice(self, path: str) -> str:
        if path.split(".")[0] != "expression":
            return super().typed_credential_advice(path)
        return ("A transform's result is stored with the work item, which every viewer reads, "
                "and an expression cannot read an organization secret: remove it (an http "
                'step sends a secret with "secret_headers").')

    def execute(self, ctx: StepContext) -> Outcome:
        expression = ctx.config.get("expression")
        if not isinstance(expression, str):
            return Fail("bad_config", "The transform has no 'expression' in its config.")
        try:
            return Complete(expression_search(expression, ctx.data))
        except JMESPathError as exc:
            return Fail("bad_expression", expression_error(exc))
