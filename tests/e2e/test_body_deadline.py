"""A body that does not arrive within AUXOT_BODY_READ_TIMEOUT_SECONDS gets 408 and frees the
gunicorn thread: slow senders holding every thread do not stop ordinary triggers."""

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.processes import Gunicorn, wait_for
from workflows.models import WorkItem

THREADS = 4
SLOW = 2 * THREADS + 2  # more slow senders than the two workers have threads


def _dribble(port: int, path: str, token: str, stop: threading.Event) -> bytes:
    """1,000-byte body, one byte per 0.5 s (~8 min in all); returns what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     f"\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n{{"
                     .encode())
        for _ in range(999):
            if stop.is_set():
                return b""
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                return _read_answer(sock)
            try:
                sock.sendall(b" ")
            except OSError:
                return b"reset"
    return b""


def _read_answer(sock: socket.socket) -> bytes:
    """The whole answer: the server closes the connection after a 408, so read to EOF (one
    recv may hold only the head when the machine is busy)."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass  # a reset after the answer was sent
    return answer or b"reset"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_slow_bodies_get_408_and_triggers_still_get_202(intake_a, member_token):
    web = Gunicorn(workers=2, GUNICORN_THREADS=str(THREADS), AUXOT_LONG_POLL_MAX_WAITERS="2",
                   AUXOT_BODY_READ_TIMEOUT_SECONDS="3").start()
    path = f"/v1/intake/{intake_a.pk}"
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(SLOW) as pool:
            slow = [pool.submit(_dribble, web.port, path, member_token, stop)
                    for _ in range(SLOW)]
            try:
                time.sleep(1)  # every thread of both workers is now reading a slow body
                response = requests.post(f"{web.url}{path}", json={"n": 7}, timeout=30,
                                         headers={"Authorization": f"Bearer {member_token}"})
                # Each slow sender gets its 408 once the deadline passes: wait for them
                # (bounded), however quickly the ordinary trigger was answered.
                answers = [future.result(timeout=30) for future in slow]
            finally:
                stop.set()  # before the pool joins its threads
    finally:
        stop.set()
        web.stop()
    assert response.status_code == 202
    assert WorkItem.objects.filter(pk=response.json()["work_id"]).exists()
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) >= 2 * THREADS, answers
    head, _, body = timed_out[0].partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    assert json.loads(body)["code"] == "request_timeout"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_prompt_body_is_read_whole_through_the_deadline(intake_a, member_token):
    web = Gunicorn(workers=1, AUXOT_BODY_READ_TIMEOUT_SECONDS="3").start()
    try:
        headers = {"Authorization": f"Bearer {member_token}"}
        big = {"blob": "x" * 200_000}
        accepted = requests.post(f"{web.url}/v1/intake/{intake_a.pk}", json=big,
                                 headers=headers, timeout=30)
        chunked = requests.post(f"{web.url}/v1/intake/{intake_a.pk}", timeout=30,
                                headers={**headers, "Content-Type": "application/json"},
                                data=iter([b'{"n":', b' 2}']))  # a generator: sent chunked
    finally:
        web.stop()
    assert accepted.status_code == 202, accepted.text
    assert WorkItem.objects.get(pk=accepted.json()["work_id"]).input == big
    assert chunked.status_code == 202, chunked.text
    assert WorkItem.objects.get(pk=chunked.json()["work_id"]).input == {"n": 2}


def test_the_deadline_is_a_problem_code(api):
    response = api.get("/v1/problems/request_timeout")
    assert response.status_code == 200
    assert b"408" in response.content


def test_watchdog_shuts_the_read_side_only_after_the_deadline():
    from auxot.bodydeadline import _watchdog

    server, client = socket.socketpair()
    with server, client:
        released = _watchdog.watch(server, 0.05)
        _watchdog.release(released)
        expiring = _watchdog.watch(server, 0.2)
        wait_for(lambda: expiring.expired, 5, what="the deadline to pass")
        assert not released.expired
        assert server.recv(10) == b""  # the read side is shut: a blocked read returns at once


def _declare_huge_then_stall(port: int, head: bytes) -> tuple[bytes, float]:
    """Send `head` and one byte of the body, then nothing; (the answer, seconds to EOF)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + b"x")
        return _read_answer(sock), time.monotonic() - started


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_huge_declared_or_chunked_body_gets_413_unread_and_frees_the_thread(
        intake_a, member_token):
    """gunicorn reads the rest of a declared body after any answer, with no timeout: a client
    declaring 1 TB (no key, any path) and sending a byte would hold the thread for ever."""
    web = Gunicorn(workers=1, GUNICORN_THREADS=str(THREADS),
                   AUXOT_BODY_READ_TIMEOUT_SECONDS="30").start()
    declared = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 999999999999\r\n\r\n")
    limit = 1024 * 1024
    chunked = (f"POST /v1/intake/{intake_a.pk} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {member_token}\r\nContent-Type: application/json\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n{limit + 10:x}\r\n".encode()
               + b" " * (limit + 10) + b"\r\n1000\r\n" + b" " * 4095)  # the end never comes
    try:
        with ThreadPoolExecutor(2 * THREADS) as pool:
            stalled = [pool.submit(_declare_huge_then_stall, web.port,
                                   declared if n % 2 else chunked) for n in range(2 * THREADS)]
            answers = [future.result(timeout=60) for future in stalled]
        response = requests.post(f"{web.url}/v1/intake/{intake_a.pk}", json={"n": 1},
                                 timeout=30, headers={"Authorization": f"Bearer {member_token}"})
    finally:
        web.stop()
    for answer, seconds in answers:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"payload_too_large" in answer
        assert seconds < 20  # closed at once, not when the (30 s) body deadline passes
    assert response.status_code == 202
