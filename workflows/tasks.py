"""Dotted entry points for django-q2. Arguments are ids only; all state is in the database."""

from workflows.batch import task_clock, work_item_process
from workflows.batch import work_drain as _drain


def work_drain(reason: str = "") -> int:
    """Claim and run due items in batches (see workflows/batch.py)."""
    with task_clock():
        return _drain()


def work_item_run(work_id: str) -> int:
    # Messages of this shape may still be on the broker from before drains: run them as one.
    with task_clock():
        return work_item_process(work_id=work_id)


def replay_batch_run(batch_id: str) -> int:
    from workflows.replay import replay_batch_process

    return replay_batch_process(batch_id=batch_id)
