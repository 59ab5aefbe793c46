"""PostgreSQL timestamps are parsed by psycopg's C loader, with Django's results."""

import datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import psycopg
import pytest
from django.db import DataError, connection
from psycopg.pq import Format

from auxot.pgtime import UTC, UtcTimestamptzLoader, fast_timestamps

postgresql_only = pytest.mark.skipif("connection.vendor != 'postgresql'")
OID = psycopg.adapters.types["timestamptz"].oid
# Text PostgreSQL sends back, in every shape the loaders must agree on.
VALUES = [
    "2026-11-30 20:47:50.168996+00", "2026-11-30 20:47:50+00", "2026-11-30 20:47:50.5+05:30",
    "2026-03-29 01:30:00-08", "2024-02-29 23:59:59.999999+14", "1970-01-01 00:00:00+00",
    "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00", "1901-12-13 20:45:52+00:19:32",
]


def _select(djangos: bool, values: list[str] = VALUES) -> list:
    from django.db.backends.postgresql.psycopg_any import register_tzloader

    with connection.cursor() as cursor:
        if djangos:
            register_tzloader(UTC, cursor)  # what Django registers on every connection
        cursor.execute("SELECT " + ", ".join(["CAST(%s AS timestamptz)"] * len(values))
                       + ", CAST(NULL AS timestamptz)", values)
        return list(cursor.fetchone())


@postgresql_only
@pytest.mark.django_db
def test_connections_parse_timestamps_with_psycopgs_c_loader():
    connection.ensure_connection()
    with connection.cursor() as cursor:
        registered = cursor.connection.adapters.get_loader(OID, Format.TEXT)
        assert registered is UtcTimestamptzLoader
        loader = registered(OID, cursor.cursor)
    # No Python frame per value: psycopg calls the C loader's own method.
    assert type(loader.load.__self__) is UtcTimestamptzLoader._c
    assert UtcTimestamptzLoader._c.__module__.startswith("psycopg_")  # psycopg_binary or _c


@postgresql_only
@pytest.mark.django_db
def test_values_are_the_ones_djangos_loader_gives():
    ours, djangos = _select(djangos=False), _select(djangos=True)
    assert ours == djangos
    assert ours[-1] is None
    for value in ours[:-1]:
        assert isinstance(value, datetime.datetime) and value.tzinfo is UTC
    assert ours[0] == datetime.datetime(2026, 11, 30, 20, 47, 50, 168996, tzinfo=UTC)
    assert ours[2] == datetime.datetime(2026, 11, 30, 15, 17, 50, 500000, tzinfo=UTC)


@postgresql_only
@pytest.mark.django_db
def test_infinity_is_refused_as_djangos_loader_refuses_it():
    for djangos in (False, True):
        with connection.cursor() as cursor:
            if djangos:
                from django.db.backends.postgresql.psycopg_any import register_tzloader

                register_tzloader(UTC, cursor)
            with pytest.raises(DataError, match="after year 10K"):
                cursor.execute("SELECT CAST('infinity' AS timestamptz)")
                cursor.fetchone()


@postgresql_only
@pytest.mark.django_db
def test_a_session_in_another_time_zone_gets_djangos_results_too():
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Kolkata'")
    values = [v for v in VALUES if not v.startswith("9999")]  # past 9999 in Kolkata
    try:
        ours, djangos = _select(False, values), _select(True, values)
        with connection.cursor() as cursor:
            loader = UtcTimestamptzLoader(OID, cursor.cursor)
        assert "load" not in vars(loader)  # the C result is given UTC, as Django does
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
    assert ours == djangos
    assert all(value.tzinfo is UTC for value in ours[:-1])


def _connection(vendor: str, timezone, registered: list) -> SimpleNamespace:
    """A Django connection as `fast_timestamps` sees it, recording what it registers."""
    return SimpleNamespace(vendor=vendor, timezone=timezone, connection=SimpleNamespace(
        adapters=SimpleNamespace(register_loader=lambda *args: registered.append(args))))


@pytest.mark.parametrize("vendor, timezone", [
    ("sqlite", UTC), ("postgresql", ZoneInfo("Europe/Berlin")), ("postgresql", None)])
def test_left_to_django_where_its_results_would_differ(vendor, timezone):
    registered = []
    stub = _connection(vendor, timezone, registered)
    assert fast_timestamps(sender=None, connection=stub) is False
    assert registered == []


def test_a_utc_postgresql_connection_gets_the_loader():
    registered = []
    stub = _connection("postgresql", UTC, registered)
    assert fast_timestamps(sender=None, connection=stub) is True
    assert registered == [("timestamptz", UtcTimestamptzLoader)]
