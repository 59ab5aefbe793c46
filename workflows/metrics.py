"""The engine's own Prometheus metrics (workflows never imports intakes, so they live here)."""

from prometheus_client import Counter, Histogram

# Step kinds are a fixed registry and outcomes a fixed set: every label value is bounded.
STEP_DURATION = Histogram(
    "auxot_step_duration_seconds", "Time one step attempt took in the worker, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
WORK_ITEMS_FINISHED = Counter(
    "auxot_work_items_finished_total", "Work items that reached a terminal status.", ["status"])

OUTCOMES = {"Complete": "completed", "Wait": "waiting", "Fail": "failed"}


def step_observe(*, kind: str, outcome: object, seconds: float) -> None:
    STEP_DURATION.labels(kind=kind, outcome=OUTCOMES.get(type(outcome).__name__, "other")
                         ).observe(seconds)
