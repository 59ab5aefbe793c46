"""The ORM broker: on PostgreSQL a committed message wakes the pusher instead of a poll."""

import threading

import psycopg
import pytest
from django.db import connection, connections, transaction
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from auxot.orm_broker import QUEUE_CHANNEL, ListeningORM
from tests import processes

postgresql_only = pytest.mark.skipif("connection.vendor != 'postgresql'")


def _payload(name: str) -> str:
    return SignedPackage.dumps({"id": name, "name": name, "func": "math.copysign",
                                "args": (1, 1), "kwargs": {}})


def test_the_orm_broker_is_the_listening_one(settings, db):
    if settings.REDIS_URL:
        pytest.skip("REDIS_URL is set: the Redis broker is in use")
    assert settings.Q_CLUSTER["broker_class"] == "auxot.orm_broker.ListeningORM"
    assert isinstance(get_broker(), ListeningORM)


@pytest.mark.django_db(transaction=True)
def test_a_message_is_read_and_taken_once():
    broker = ListeningORM()
    try:
        broker.enqueue(_payload("one"))
        taken = broker.dequeue()
        assert [SignedPackage.loads(payload)["id"] for _, payload in taken] == ["one"]
        assert OrmQ.objects.count() == 1  # locked until acknowledged, not gone
        assert not broker.dequeue()
    finally:
        broker.listener_close()


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_an_enqueue_notifies_at_commit_and_not_on_rollback():
    broker = ListeningORM()
    with psycopg.connect(processes.test_database_url(), autocommit=True) as listener:
        listener.execute(f"LISTEN {QUEUE_CHANNEL}")
        with transaction.atomic():
            broker.enqueue(_payload("rolled-back"))
            transaction.set_rollback(True)
        assert list(listener.notifies(timeout=0.3)) == []
        with transaction.atomic():
            broker.enqueue(_payload("kept"))
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [QUEUE_CHANNEL]


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_waiting_pusher_takes_a_message_committed_after_its_empty_read(monkeypatch):
    # With an hour-long poll, only the NOTIFY can end the wait.
    monkeypatch.setattr(Conf, "POLL", 3600)
    broker = ListeningORM()
    read_once, result = threading.Event(), []
    take = broker._take

    def take_and_tell():
        taken = take()
        read_once.set()
        return taken

    monkeypatch.setattr(broker, "_take", take_and_tell)

    def pusher():
        try:
            result.append(broker.dequeue())
        finally:
            broker.listener_close()
            connections.close_all()

    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    assert read_once.wait(30)
    broker.enqueue(_payload("late"))
    thread.join(60)
    assert not thread.is_alive(), "the pusher slept through the NOTIFY"
    assert [SignedPackage.loads(payload)["id"] for _, payload in result[0]] == ["late"]


@pytest.mark.django_db(transaction=True)
def test_without_postgresql_it_is_the_polling_orm_broker(monkeypatch):
    if connection.vendor == "postgresql":
        monkeypatch.setattr(ListeningORM, "_postgresql", lambda self: False)
    monkeypatch.setattr(Conf, "POLL", 0.01)
    broker = ListeningORM()
    broker.enqueue(_payload("polled"))
    assert [SignedPackage.loads(p)["id"] for _, p in broker.dequeue()] == ["polled"]
    assert broker.dequeue() is None  # an empty read sleeps `poll`, then answers None
    assert broker._listener is None
