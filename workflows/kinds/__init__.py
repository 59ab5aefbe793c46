"""Step kinds: the one registry that the model's choices, the admin, config validation and
the engine all read.

Adding a kind: write its module here (a `StepKind` subclass with `name` and `label`), then
add an instance to `REGISTRY` below.
"""

from workflows.kinds._shared import expression_budget
from workflows.kinds.agent import Agent
from workflows.kinds.approval import Approval
from workflows.kinds.base import Complete, Fail, Outcome, StepContext, StepKind, Wait
from workflows.kinds.delay import Delay
from workflows.kinds.http import Http
from workflows.kinds.transform import Transform

REGISTRY: dict[str, StepKind] = {kind.name: kind for kind in (
    Transform(),
    Delay(),
    Http(),
    Approval(),
    Agent(),
)}

__all__ = ["REGISTRY", "Complete", "Fail", "Outcome", "StepContext", "StepKind", "Wait",
           "expression_budget", "kind_choices", "kind_get"]


class UnknownKind(LookupError):
    pass


def kind_get(name: str) -> StepKind:
    """The kind registered as `name`; UnknownKind if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownKind(name) from None


def kind_choices() -> list[tuple[str, str]]:
    """(name, label) pairs for `Step.kind`'s choices and the admin's select."""
    return [(kind.name, kind.label) for kind in REGISTRY.values()]
