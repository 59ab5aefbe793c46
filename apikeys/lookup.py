"""The key lookup of every API request in one hand-written SELECT (auxot/rawsql.py):
the key with its organization, user and team, as select_related would load them, for a
fraction of the ORM's query-building cost."""

import functools

from django.contrib.auth import get_user_model
from django.db import connection

from apikeys.models import ApiKey
from auxot import rawsql
from auxot.models import Organization, Team


@functools.cache
def _plan(vendor: str):
    parts = [rawsql.columns(ApiKey, "k")]
    joins = [f"JOIN {rawsql.table(Organization)} o ON o.id = k.org_id"]
    user_model = get_user_model()
    joins += [f"LEFT JOIN {rawsql.table(user_model)} u ON u.id = k.user_id",
              f"LEFT JOIN {rawsql.table(Team)} t ON t.id = k.team_id"]
    models = [ApiKey, Organization, user_model, Team]
    parts += [rawsql.columns(model, alias) for model, alias in zip(
        models[1:], ("o", "u", "t"), strict=True)]
    select = ", ".join(sql for _fields, sql in parts)
    sql = (f"SELECT {select} FROM {rawsql.table(ApiKey)} k {' '.join(joins)} "
           "WHERE k.lookup_id = %s")
    return sql, list(zip(models, [fields for fields, _sql in parts], strict=True))


def apikey_lookup(*, lookup_id: str) -> ApiKey | None:
    sql, layout = _plan(connection.vendor)
    row = rawsql.fetch_one(sql, [lookup_id])
    if row is None:
        return None
    key, org, user, team = rawsql.instances(layout, row)
    key.org, key.user, key.team = org, user, team
    return key
