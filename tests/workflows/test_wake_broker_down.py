"""A broker outage fails every wake-up: the log says so once per interval, not per trigger."""

import logging

import pytest

from workflows import wake


class _DownBroker:
    def queue_size(self):
        raise ConnectionError("Error 111 connecting to the broker. Connection refused.")


@pytest.fixture
def broker_down(monkeypatch):
    monkeypatch.setattr(wake, "broker_get", lambda: _DownBroker())
    monkeypatch.setattr(wake, "_broker_errors", wake._ErrorThrottle(30.0))
    clock = [1000.0]
    monkeypatch.setattr(wake.time, "monotonic", lambda: clock[0])
    return clock


def _reports(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "workflows.wake"]


def test_a_broker_outage_is_one_line_per_interval_with_the_count(broker_down, caplog):
    caplog.set_level(logging.ERROR, logger="workflows.wake")
    assert [wake.drain_request() for _ in range(50)] == [False] * 50
    first = _reports(caplog)
    assert len(first) == 1  # the first failure, with its traceback
    assert first[0].exc_info is not None
    assert "0 more failures" in first[0].getMessage()

    broker_down[0] += 29.0
    wake.drain_request()
    assert len(_reports(caplog)) == 1  # still inside the interval
    broker_down[0] += 1.0
    wake.drain_request()
    assert len(_reports(caplog)) == 2
    assert "50 more failures" in _reports(caplog)[-1].getMessage()
