"""The intakes' own Prometheus counters: triggers and callback attempts."""

import re

from prometheus_client import Counter

TRIGGERS = Counter(
    "auxot_triggers_total", "Trigger requests by outcome (accepted, rejected) and reason.",
    ["outcome", "reason"])
CALLBACK_ATTEMPTS = Counter(
    "auxot_callback_attempts_total", "Callback delivery attempts by outcome.", ["outcome"])

_REASON = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CALLBACK_OUTCOMES = {"delivered": "delivered", "pending": "retrying", "failed": "failed",
                     "disabled": "disabled"}


def trigger_accepted(*, replayed: bool) -> None:
    TRIGGERS.labels(outcome="accepted", reason="replayed" if replayed else "new").inc()


def trigger_rejected(*, code: str) -> None:
    # Codes come from our own problem types; anything unexpected is folded, never a new series.
    TRIGGERS.labels(outcome="rejected", reason=code if _REASON.match(code) else "other").inc()


def callback_attempted(*, state: str) -> None:
    CALLBACK_ATTEMPTS.labels(outcome=CALLBACK_OUTCOMES.get(state, "other")).inc()
