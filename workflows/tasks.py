"""Dotted entry points for django-q2. Arguments are ids only; all state is in the database."""

from workflows.engine import work_item_process


def work_item_run(work_id: str) -> int:
    return work_item_process(work_id=work_id)


def replay_batch_run(batch_id: str) -> int:
    from workflows.replay import replay_batch_process

    return replay_batch_process(batch_id=batch_id)
