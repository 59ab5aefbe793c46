"""PostgreSQL: timestamptz values parsed by psycopg's C loader, not in Python.

Django (5.x, psycopg 3) registers its own timestamptz loader on every connection: a Python
subclass of psycopg's *Python* loader that parses the text with a regular expression, then
sets the connection's time zone. That costs ~5 µs per value, against ~0.7 µs for the C
loader psycopg[binary] brings, and a hot read returns several timestamps per row (the
callback dispatcher's claimed deliveries carry about fifteen each). `DEBUG=1 python -m
auxot.pgtime` measures both on DATABASE_URL.

When the results are the same, this module puts the C loader back, per connection (the
`connection_created` signal): Django's connection time zone is UTC (USE_TZ, no TIME_ZONE in
the database settings: the default here) and the session's time zone, which the C loader
converts to, is UTC as well. Then both loaders return the same aware datetime with
`datetime.timezone.utc`. Otherwise (another time zone, or psycopg without its C
extension) Django's loader stays.
"""

import datetime

import psycopg
from django.db.backends.signals import connection_created
from psycopg.adapt import Loader
from psycopg.pq import Format

UTC = datetime.UTC
_PROBE = b"2000-01-01 00:00:00+00"


def _c_loader() -> type | None:
    """psycopg's own timestamptz text loader, if it is the C one."""
    if psycopg.pq.__impl__ not in ("c", "binary"):
        return None
    return psycopg.adapters.get_loader(psycopg.adapters.types["timestamptz"].oid, Format.TEXT)


class UtcTimestamptzLoader(Loader):
    """Django's loader's results (aware, in UTC), from psycopg's C loader.

    `timezone` is what Django's cursor factory compares with the connection's time zone (it
    registers its own loader on a cursor whose time zone differs). Each instance's `load`
    is the C loader's own bound method when the session's time zone is UTC (no Python frame
    per value); otherwise the C result given the UTC tzinfo, as Django's loader does."""

    timezone = UTC
    _c: type | None = _c_loader()

    def __init__(self, oid: int, context=None):
        super().__init__(oid, context)
        parse = self._c(oid, context).load
        if parse(_PROBE).tzinfo is UTC:
            self.load = parse  # shadows the method below: psycopg reads `loader.load`
        else:
            self._parse = parse

    def load(self, data):
        return self._parse(data).replace(tzinfo=UTC)


def fast_timestamps(sender, connection, **kwargs) -> bool:
    """`connection_created`: use UtcTimestamptzLoader on this connection when its results
    are Django's. Returns whether it did."""
    if (connection.vendor != "postgresql" or connection.timezone is not UTC
            or UtcTimestamptzLoader._c is None):
        return False
    connection.connection.adapters.register_loader("timestamptz", UtcTimestamptzLoader)
    return True


def connect() -> None:
    connection_created.connect(fast_timestamps, dispatch_uid="auxot.pgtime")


if __name__ == "__main__":  # the per-value cost of each loader, on DATABASE_URL
    import os
    import time

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "auxot.settings")
    django.setup()
    from django.db import connection
    from django.db.backends.postgresql.psycopg_any import register_tzloader

    sql = ("SELECT now() + g * interval '1 second', now() - g * interval '1 day' "
           "FROM generate_series(1, 20000) g")
    connection.ensure_connection()
    for name in ("Django's", "C (this module)"):
        best = float("inf")
        for _ in range(5):  # the best of five: the first pays for warming up
            with connection.cursor() as cursor:
                if name == "Django's":
                    register_tzloader(UTC, cursor)
                started = time.perf_counter()
                cursor.execute(sql)
                cursor.fetchall()
                best = min(best, time.perf_counter() - started)
        print(f"{name} loader: {best * 1e6 / 40000:.2f} µs per value (with the query)")
