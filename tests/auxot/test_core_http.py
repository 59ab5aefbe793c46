"""auxot.http: the client address and Retry-After, read one way everywhere."""

from datetime import UTC, datetime

import pytest
from django.test import RequestFactory

from auxot.http import client_ip, retry_after_seconds

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def test_client_ip_is_the_remote_address_or_none():
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9")
    assert client_ip(request) == "203.0.113.9"
    request.META["REMOTE_ADDR"] = ""
    assert client_ip(request) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0),
    (" 7 ", 7.0),
    ("Mon, 30 Nov 2026 12:00:30 GMT", 30.0),
    ("Mon, 30 Nov 2026 11:00:00 GMT", 0.0),  # a date in the past: at once
    ("", None),
    (None, None),
    ("soon", None),
    ("-5", None),
])
def test_retry_after_reads_seconds_and_http_dates(value, expected):
    assert retry_after_seconds(value, now=NOW) == expected


def test_retry_after_is_capped_when_asked():
    assert retry_after_seconds("86400", now=NOW, cap=3600) == 3600


@pytest.mark.django_db
def test_task_enqueue_puts_one_message_on_the_broker():
    from django_q.models import OrmQ

    from auxot.broker import task_enqueue

    before = OrmQ.objects.count()
    assert task_enqueue(task="auxot.broker.broker_get", arg="x", name="probe") is True
    assert OrmQ.objects.count() == before + 1


def test_task_enqueue_never_raises_when_the_broker_fails(monkeypatch, caplog):
    import django_q.tasks

    from auxot.broker import task_enqueue

    def broken(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(django_q.tasks, "async_task", broken)
    assert task_enqueue(task="t", arg="1", name="work-1") is False
    assert "enqueue of work-1 failed" in caplog.text
