from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, the one timestamp format of the public API: always six
    fractional digits (`2026-11-29T06:52:34.007000Z`), so every value has the same width and a
    client parsing a fixed format never meets one without them (a whole second)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z") + (
        "Z" if value.tzinfo is None else "")


def shown(value: datetime | None) -> str:
    """A time as the admin's pages show one (DATETIME_FORMAT: with its zone), for the
    pages' own HTML (an item's audit trail, an intake's recent work)."""
    from django.utils import timezone
    from django.utils.formats import date_format

    return date_format(timezone.localtime(value), "DATETIME_FORMAT") if value else "-"
