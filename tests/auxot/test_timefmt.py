"""The public API's one timestamp format: RFC 3339, UTC, a Z, six fractional digits."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from auxot.timefmt import iso


@pytest.mark.parametrize(("value", "text"), [
    (datetime(2026, 11, 29, 6, 52, 34, tzinfo=UTC), "2026-11-29T06:52:34.000000Z"),
    (datetime(2026, 11, 29, 6, 52, 34, 7000, tzinfo=UTC), "2026-11-29T06:52:34.007000Z"),
    (datetime(2026, 11, 29, 12, 22, 34, 655046, tzinfo=timezone(timedelta(hours=5, minutes=30))),
     "2026-11-29T06:52:34.655046Z"),
    (None, None),
])
def test_every_timestamp_has_the_same_shape(value, text):
    assert iso(value) == text


def test_a_whole_second_is_as_wide_as_any_other():
    whole, part = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert len(iso(whole)) == len(iso(part)) == len("2026-01-01T00:00:00.000000Z")
