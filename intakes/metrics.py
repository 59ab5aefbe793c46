"""The intakes' own Prometheus counters: triggers and callback attempts."""

import re

from prometheus_client import Counter

from auxot.errors import PROBLEMS

TRIGGERS = Counter(
    "auxot_triggers_total", "Trigger requests by outcome (accepted, rejected) and reason.",
    ["outcome", "reason"])
CALLBACK_ATTEMPTS = Counter(
    "auxot_callback_attempts_total", "Callback delivery attempts by outcome.", ["outcome"])

_HTTP_STATUS = re.compile(r"http_[1-5][0-9]{2}")  # a rejection that carried no problem code
CALLBACK_OUTCOMES = {"delivered": "delivered", "pending": "retrying", "failed": "failed",
                     "disabled": "disabled"}


def trigger_accepted(*, replayed: bool) -> None:
    TRIGGERS.labels(outcome="accepted", reason="replayed" if replayed else "new").inc()


def trigger_rejected(*, code: str) -> None:
    # Only our own problem codes (and HTTP statuses) are series: anything else is folded into
    # "other", so no value from outside can add a label value.
    known = code in PROBLEMS or _HTTP_STATUS.fullmatch(code)
    TRIGGERS.labels(outcome="rejected", reason=code if known else "other").inc()


def callback_attempted(*, state: str) -> None:
    CALLBACK_ATTEMPTS.labels(outcome=CALLBACK_OUTCOMES.get(state, "other")).inc()
