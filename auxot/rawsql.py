"""Hand-written SELECTs for the two or three hottest reads, without the ORM's query-building
cost (~0.45 ms of Python per query, measured with bench/profile.py), but with the ORM's own
column lists and value converters, so model changes are picked up and values come back
exactly as the ORM would return them.
"""

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Field, Model


def _db():
    """This thread's connection itself: every attribute read through the `connection` proxy
    costs a context-local lookup (~1 µs), and a row's values make thousands of them."""
    return connections[DEFAULT_DB_ALIAS]


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def columns(model: type[Model], alias: str) -> tuple[list[Field], str]:
    """The model's concrete fields and `alias.col, …` for a SELECT list."""
    fields = list(model._meta.concrete_fields)
    return fields, ", ".join(f"{alias}.{quote(f.column)}" for f in fields)


def _converters(fields: tuple[Field, ...], alias: str) -> list[tuple]:
    """Per field: its column and the converters the ORM would run on its value (computed
    once per field list and connection, not per row)."""
    key = (fields, alias)
    plan = _CONVERTERS.get(key)
    if plan is None:
        plan = []
        for field in fields:
            col = field.get_col(field.model._meta.db_table)
            plan.append((col, connection.ops.get_db_converters(col)
                         + field.get_db_converters(connection)))
        _CONVERTERS[key] = plan
    return plan


_CONVERTERS: dict = {}


def instance(model: type[Model], fields: list[Field], values) -> Model:
    """A model instance from raw column values, converted as the ORM converts them."""
    db = _db()
    converted = []
    for (col, converters), value in zip(_converters(tuple(fields), db.alias), values,
                                        strict=True):
        for converter in converters:
            value = converter(value, col, db)
        converted.append(value)
    return model.from_db(db.alias, [f.attname for f in fields], converted)


def instances(layout, row) -> list[Model | None]:
    """Split a joined row into one instance per (model, fields) of `layout`, in order; None
    for a model whose first column (its primary key) is NULL: an outer join found nothing."""
    objects, start = [], 0
    for model, fields in layout:
        values = row[start:start + len(fields)]
        start += len(fields)
        objects.append(None if values[0] is None else instance(model, fields, values))
    return objects


def fetch_one(sql: str, params: list):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def insert(instance: Model, *, select: str | None = None) -> tuple[str, list]:
    """`INSERT INTO table (cols) VALUES (…)` for an unsaved instance, with the values
    prepared as the ORM's save() would (defaults and auto_now applied, JSON adapted), for
    statements that put several rows in one round trip (see intakes/accept.py).

    `select`: the row only on a condition, `INSERT INTO table (cols) SELECT … <select>`
    (e.g. "WHERE EXISTS (…)"; its own params follow the row's)."""
    fields = _insert_fields(instance)
    cols = ", ".join(quote(f.column) for f in fields)
    params = [f.get_db_prep_save(f.pre_save(instance, add=True), connection) for f in fields]
    marks = ", ".join(["%s"] * len(fields))
    source = f"VALUES ({marks})" if select is None else f"SELECT {marks} {select}"
    sql = f"INSERT INTO {table(type(instance))} ({cols}) {source}"
    return sql, params


def _insert_fields(instance: Model) -> list[Field]:
    """The columns an INSERT of `instance` writes: a database-generated key (AutoField)
    left unset is left to the database."""
    return [f for f in instance._meta.concrete_fields if not f.generated
            and not (f.primary_key and f.db_returning and getattr(instance, f.attname) is None)]


def insert_rows(instances: list[Model]) -> list[Model]:
    """Several unsaved instances of one model in one INSERT, each value prepared as save()
    prepares it; a key the database generates is set on each instance from RETURNING, in
    order (as the ORM's bulk_create relies on), marking them saved. Returns the instances.
    The ORM's bulk_create costs ~0.2 ms of Python per row more."""
    if not instances:
        return instances
    db = _db()
    first = instances[0]
    meta = first._meta
    generated = meta.pk if meta.pk.db_returning and first.pk is None else None
    fields = _insert_fields(first)
    one = f"({', '.join(['%s'] * len(fields))})"
    sql = (f"INSERT INTO {table(type(first))} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608 (names from _meta)
           f"VALUES {', '.join([one] * len(instances))}")
    params = [f.get_db_prep_save(f.pre_save(instance, add=True), db)
              for instance in instances for f in fields]
    if generated is not None:
        sql += f" RETURNING {quote(generated.column)}"
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        keys = cursor.fetchall() if generated is not None else []
    for index, instance in enumerate(instances):
        if generated is not None:
            setattr(instance, generated.attname, instance_value(generated, keys[index][0]))
        instance._state.adding = False
        instance._state.db = db.alias
    return instances


def update_rows(model: type[Model], *, match: list[str], fields: list[str], rows: list[tuple],
                returning: str | None = None) -> list:
    """One UPDATE that gives many rows each its own values (`UPDATE … FROM` a VALUES list):
    a row of `rows` is the values of the `match` fields (which rows it updates, by equality)
    then of the `fields` to set. Values are prepared as save() prepares them. Returns the
    `returning` column of every row updated (or [] without one). The ORM's bulk_update
    builds a CASE per field and row, ~0.1 ms of Python per value; this costs one pass."""
    if not rows:
        return []
    db = _db()
    meta = model._meta
    named = [meta.get_field(name) for name in match + fields]
    names = [f"v{index}" for index in range(len(named))]
    if db.vendor == "postgresql":  # VALUES columns are typed by their first row
        marks = [f"CAST(%s AS {f.db_type(db)})" for f in named]
    else:
        marks = ["%s"] * len(named)
    one = f"({', '.join(marks)})"
    params = []
    for row in rows:
        params += [f.get_db_prep_save(value, db)
                   for f, value in zip(named, row, strict=True)]
    where = " AND ".join(f"t.{quote(f.column)} = v.{n}"
                         for f, n in zip(named[:len(match)], names[:len(match)], strict=True))
    sets = ", ".join(f"{quote(f.column)} = v.{n}"
                     for f, n in zip(named[len(match):], names[len(match):], strict=True))
    sql = (f"WITH v ({', '.join(names)}) AS (VALUES {', '.join([one] * len(rows))}) "  # noqa: S608 (names from _meta)
           f"UPDATE {table(model)} AS t SET {sets} FROM v WHERE {where}")
    if returning:
        sql += f" RETURNING {quote(meta.get_field(returning).column)}"  # SQLite: no alias
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        if not returning:
            return []
        field = meta.get_field(returning)
        return [instance_value(field, value) for (value,) in cursor.fetchall()]


def instance_value(field: Field, value):
    """A raw column value converted as the ORM converts it for this field."""
    db = _db()
    [(col, converters)] = _converters((field,), db.alias)
    for converter in converters:
        value = converter(value, col, db)
    return value
