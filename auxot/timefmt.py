from datetime import datetime


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, the one timestamp format of the public API."""
    return value.isoformat().replace("+00:00", "Z") if value else None
