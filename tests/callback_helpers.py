"""Finished work items for the callback tests."""

from workflows.batch import work_item_process
from workflows.services import work_item_create


def finished_item(intake, **fields):
    item = work_item_create(workflow=intake.workflow, intake=intake, input={"n": 1})
    if fields:
        for name, value in fields.items():
            setattr(item, name, value)
        item.save(update_fields=list(fields))
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed"
    return item
