"""Dotted entry points for django-q2. Arguments are ids only; all state is in the database."""

from workflows.engine import work_item_process


def work_item_run(work_id: str) -> int:
    return work_item_process(work_id=work_id)
