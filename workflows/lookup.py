"""The poll's step progress in one hand-written SELECT (auxot/rawsql.py): the workflow's
steps, each LEFT JOINed to one work item's attempts. The ORM equivalent is two queries
(steps, then runs) and ~1 ms more of Python per poll. `step_progress_many` reads the
progress of a batch of items (the callback dispatcher's) in one SELECT as well.
"""

import functools

from django.db import connection
from django.db.models import Field

from auxot import rawsql
from workflows.models import Step, StepRun, WorkItem

_STEP_FIELDS = ("id", "workflow", "position", "name", "kind")
_RUN_FIELDS = ("id", "step", "attempt", "status", "started_at", "finished_at", "error", "state")


@functools.cache
def _progress_plan(vendor: str) -> tuple[str, list[Field], list[Field]]:
    # In the models' own order: Model.from_db maps a partial row by field order.
    step_fields = [f for f in Step._meta.concrete_fields if f.name in _STEP_FIELDS]
    run_fields = [f for f in StepRun._meta.concrete_fields if f.name in _RUN_FIELDS]

    def col(model, name: str) -> str:
        return rawsql.quote(model._meta.get_field(name).column)

    def run_col(field: Field) -> str:  # a run's state only when carried: nothing else shows it
        if field.name == "state":
            return f"CASE WHEN r.{col(StepRun, 'status')} = %s THEN r.{col(StepRun, 'state')} END"
        return f"r.{col(StepRun, field.name)}"

    cols = ", ".join([f"s.{col(Step, f.name)}" for f in step_fields]
                     + [run_col(f) for f in run_fields])
    sql = (f"SELECT {cols} "
           f"FROM {rawsql.table(Step)} s LEFT JOIN {rawsql.table(StepRun)} r "
           f"ON r.{col(StepRun, 'step')} = s.{col(Step, 'id')} "
           f"AND r.{col(StepRun, 'work_item')} = %s "
           f"WHERE s.{col(Step, 'workflow')} = %s "
           f"ORDER BY s.{col(Step, 'position')}, r.{col(StepRun, 'attempt')}")
    return sql, step_fields, run_fields


@functools.cache
def _many_plan(vendor: str, count: int) -> str:
    """The same rows for `count` items, each row led by its item's id."""
    def col(model, name: str) -> str:
        return rawsql.quote(model._meta.get_field(name).column)

    one, _steps, _runs = _progress_plan(vendor)
    cols = one.removeprefix("SELECT ").partition(" FROM ")[0]
    item_id, item_workflow = col(WorkItem, "id"), col(WorkItem, "workflow")
    marks = ", ".join(["%s"] * count)
    return (f"SELECT wi.{item_id}, {cols} "
            f"FROM {rawsql.table(WorkItem)} wi JOIN {rawsql.table(Step)} s "
            f"ON s.{col(Step, 'workflow')} = wi.{item_workflow} "
            f"LEFT JOIN {rawsql.table(StepRun)} r "
            f"ON r.{col(StepRun, 'step')} = s.{col(Step, 'id')} "
            f"AND r.{col(StepRun, 'work_item')} = wi.{item_id} "
            f"WHERE wi.{item_id} IN ({marks}) "
            f"ORDER BY wi.{item_id}, s.{col(Step, 'position')}, r.{col(StepRun, 'attempt')}")


_workflow_fk = Step._meta.get_field("workflow")


def step_progress(item: WorkItem) -> tuple[list[Step], list[StepRun]]:
    """The item's workflow steps (by position) and its attempts (by step, then attempt), in
    one query. Only what the poll shows is loaded (a run's `state` only when it was carried
    from an earlier item): the step config and the attempts' outputs stay in the database."""
    sql, step_fields, run_fields = _progress_plan(connection.vendor)
    prep = WorkItem._meta.pk.get_db_prep_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [StepRun.Status.CARRIED, prep(item.pk, connection),
                             _workflow_fk.get_db_prep_value(item.workflow_id, connection)])
        rows = cursor.fetchall()
    return _progress_rows(rows, step_fields, run_fields)


def _progress_rows(rows, step_fields, run_fields) -> tuple[list[Step], list[StepRun]]:
    split = len(step_fields)
    steps: list[Step] = []
    runs: list[StepRun] = []
    last_step = object()
    for row in rows:
        if row[0] != last_step:  # a step's first row (one per attempt, or one without)
            last_step = row[0]
            steps.append(rawsql.instance(Step, step_fields, row[:split]))
        if row[split] is not None:
            runs.append(rawsql.instance(StepRun, run_fields, row[split:]))
    return steps, runs


def step_progress_many(items: list[WorkItem]) -> dict:
    """`step_progress` of each item, keyed by the item's pk, in one query for them all."""
    if not items:
        return {}
    _sql, step_fields, run_fields = _progress_plan(connection.vendor)
    prep = WorkItem._meta.pk.get_db_prep_value
    keys = {prep(item.pk, connection): item.pk for item in items}
    with connection.cursor() as cursor:
        cursor.execute(_many_plan(connection.vendor, len(keys)),
                       [StepRun.Status.CARRIED, *keys])
        rows = cursor.fetchall()
    by_item: dict = {}
    for row in rows:
        by_item.setdefault(row[0], []).append(row[1:])
    progress = {}
    for key, pk in keys.items():
        progress[pk] = _progress_rows(by_item.get(key, []), step_fields, run_fields)
    return progress
