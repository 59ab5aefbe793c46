"""SIGTERM to gunicorn: a request caught mid-body still finishes with a stored 202."""

import json
import socket
import time

import pytest

from apikeys.services import apikey_issue
from tests.processes import Gunicorn
from workflows.models import WorkItem

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_sigterm_lets_in_flight_requests_finish(cast, intake_a):
    token = apikey_issue(org=cast.org_a, label="g", user=cast.member_a).token
    body = json.dumps({"n": 1}).encode()
    web = Gunicorn(workers=1).start()
    try:
        sock = socket.create_connection(("127.0.0.1", web.port), timeout=30)
        sock.sendall(
            f"POST /v1/intake/{intake_a.pk} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:3])
        time.sleep(0.5)  # the worker is now blocked reading the rest of the body
        web.terminate()
        time.sleep(0.5)
        sock.sendall(body[3:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        web.proc.wait(30)
    finally:
        web.stop()
    assert answer.split(b" ", 2)[1] == b"202", answer[:300]
    work_id = json.loads(answer.partition(b"\r\n\r\n")[2])["work_id"]
    assert WorkItem.objects.filter(pk=work_id).exists()
    with pytest.raises(OSError):  # and the server is really gone
        socket.create_connection(("127.0.0.1", web.port), timeout=2)
