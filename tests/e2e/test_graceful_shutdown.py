"""SIGTERM to gunicorn: a request caught mid-body still finishes with a stored 202.

The request is sent only once a worker answers HTTP, and SIGTERM only once gunicorn's log
shows that a worker thread has parsed its headers (it is then reading the body). The rest
of the body follows once the server refuses new connections, i.e. after the worker has
left its accept loop and is draining in-flight requests.
"""

import json
import socket

import pytest
import requests

from apikeys.services import apikey_issue
from tests.processes import Gunicorn, wait_for
from workflows.models import WorkItem

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    for _ in range(1000):  # bounded: the server closes after one answer (Connection: close)
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.parametrize("run", range(3))  # it once raced the worker's boot: run it a few times
def test_sigterm_lets_in_flight_requests_finish(cast, intake_a, run):
    token = apikey_issue(org=cast.org_a, label="g", user=cast.member_a).token
    body = json.dumps({"n": run}).encode()
    path = f"/v1/intake/{intake_a.pk}"
    web = Gunicorn(workers=1, GUNICORN_CMD_ARGS="--log-level debug").start()
    try:
        sock = socket.create_connection(("127.0.0.1", web.port), timeout=30)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body[:3])
        wait_for(lambda: f"POST {path}" in web.log(), 20, what="a thread to take the request")
        web.terminate()
        wait_for(web.refuses_connections, 20, what="the worker to stop accepting")
        sock.sendall(body[3:])
        answer = _read_answer(sock)
        web.proc.wait(30)
    finally:
        web.stop()
    assert answer.split(b" ", 2)[1] == b"202", answer[:300]
    work_id = json.loads(answer.partition(b"\r\n\r\n")[2])["work_id"]
    assert WorkItem.objects.filter(pk=work_id, input={"n": run}).exists()
    assert web.proc.returncode == 0


def test_with_json_logs_gunicorns_own_lines_are_json_too(db):
    """LOG_FORMAT=json made the application's lines JSON, but gunicorn's own (its start, the
    signals, a worker's boot or timeout) stayed plain text in the same stream."""
    web = Gunicorn(workers=1, LOG_FORMAT="json").start()
    web.terminate()
    web.proc.wait(30)
    web_log = web.log()
    web.stop()
    lines = [json.loads(line) for line in web_log.splitlines() if line.strip()]
    messages = " | ".join(line["message"] for line in lines)
    assert "Booting worker" in messages and "Handling signal: term" in messages
    assert {line["logger"] for line in lines} >= {"gunicorn.error"}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_access_log_by_default_and_never_a_query_string(db, tmp_path, log_format):
    """LOG_FORMAT=json logged a gunicorn.access line per request, `?token=` included, with
    GUNICORN_ACCESSLOG unset (README: off by default; no line carries a query string)."""
    access_log = tmp_path / "access.log"
    for env in ({}, {"GUNICORN_ACCESSLOG": str(access_log)}):
        web = Gunicorn(workers=1, LOG_FORMAT=log_format, **env).start()
        assert requests.get(f"{web.url}/healthz?token=QUERYSECRET", timeout=10).ok
        web.terminate()
        web.proc.wait(30)
        web_log = web.log()
        web.stop()
        assert "QUERYSECRET" not in web_log
        assert "gunicorn.access" not in web_log and 'HTTP/1.1" 200' not in web_log
    written = access_log.read_text()
    assert "GET /healthz HTTP/1.1" in written and "QUERYSECRET" not in written


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_callers_path_or_header_cannot_forge_an_access_log_line(db, tmp_path, log_format):
    """gunicorn's access line holds the path percent-decoded (`%0a` is a line break) and the
    caller's User-Agent and Referer: in text mode, with gunicorn's own formatter, they forged
    a line and drove the terminal of whoever read the log. A control character sent raw in a
    header (ESC, DEL) is refused by gunicorn's parser (27+), as a problem, before any line."""
    forged = "2030-01-01 00:00:00 [1] [INFO] forged"
    access_log = tmp_path / "access.log"
    web = Gunicorn(workers=1, LOG_FORMAT=log_format, GUNICORN_ACCESSLOG=str(access_log)).start()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz%0a" + forged.replace(" ", "%20").encode()
                         + b"%1b[2J HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ua%1bz\r\n"
                         b"Connection: close\r\n\r\n")
            assert _read_answer(sock).startswith(b"HTTP/1.1 404")
        for header in (b"User-Agent: ua\x1b[31mz", b"User-Agent: ua\x7fz",
                       b"Referer: r\x1b]0;title\x07"):
            with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header
                             + b"\r\nConnection: close\r\n\r\n")
                answer = _read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert b'"code":"invalid_request"' in answer
        web.terminate()
        web.proc.wait(30)
    finally:
        web.stop()
    lines = [line for line in access_log.read_text().split("\n") if line]
    assert all(line.isprintable() for line in lines), lines
    assert not any(line.startswith(forged) for line in lines)
    assert len(lines) == 2, lines  # the probe start() sends, and ours (refusals write none)
    [ours] = [line for line in lines if "forged" in line]
    if log_format == "json":  # JSON escapes it: the message holds the path as decoded
        assert "\n" + forged + "\x1b[2J" in json.loads(ours)["message"]
    else:
        assert "\\n" + forged + "\\x1b[2J" in ours, ours


def test_behind_the_proxy_https_and_the_client_address_are_both_believed(cast, intake_a):
    """Gunicorn (GUNICORN_FORWARDED_ALLOW_IPS) believes X-Forwarded-Proto only, REMOTE_ADDR
    stays the proxy's; the app (AUXOT_TRUSTED_PROXIES, loopback by default) takes the
    caller's address from X-Forwarded-For."""
    from pathlib import Path

    token = apikey_issue(org=cast.org_a, label="p", user=cast.member_a).token
    web = Gunicorn(workers=1, AUXOT_PUBLIC_BASE_URL="").start()
    try:
        answer = requests.post(f"{web.url}/v1/intake/{intake_a.pk}", json={"n": 1},
                               headers={"Authorization": f"Bearer {token}",
                                        "X-Forwarded-For": "203.0.113.9",
                                        "X-Forwarded-Proto": "https"},
                               timeout=30)
    finally:
        web.stop()
    assert answer.status_code == 202
    assert answer.json()["status_url"].startswith("https://")  # the proxy's https, believed
    item = WorkItem.objects.get(pk=answer.json()["work_id"])
    assert item.created_by_ip == "203.0.113.9"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [row] = [line for line in readme.splitlines()
             if line.startswith("| `GUNICORN_FORWARDED_ALLOW_IPS` |")]
    assert "`X-Forwarded-Proto` gunicorn believes" in row
