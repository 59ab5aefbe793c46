"""The `auxot` command and its client package (`auxot_client`, the `auxot-client`
distribution in clients/python), against a live server and a real qcluster."""

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from auxot_client import cli
from auxot_client import client as api
from tests.callers import BIN, caller, worker  # noqa: F401  (fixtures)
from tests.processes import QCluster

AUXOT = str(BIN / "auxot")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
e2e = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


# --- no Django in the client -----------------------------------------------------------
@pytest.mark.parametrize("module", ["auxot_client", "auxot_client.cli"])
def test_client_modules_do_not_import_django(module):
    code = f"import sys, {module}; print('django' in sys.modules, 'requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert out.split() == ["False", "True"]


def test_console_script_is_installed():
    result = subprocess.run([AUXOT, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "verify-callback" in result.stdout


def test_help_names_every_environment_variable_the_client_reads():
    """`auxot --help` is where a CI author looks for what to set: every AUXOT_* variable the
    client package reads is named there (AUXOT_INTAKE_ID, which `replay` reads, was not)."""
    package = Path(cli.__file__).parent
    read = set(re.findall(r'"(AUXOT_[A-Z_]+)"', "".join(
        path.read_text() for path in package.glob("*.py"))))
    assert {"AUXOT_BASE_URL", "AUXOT_API_KEY", "AUXOT_INTAKE_ID", "AUXOT_CALLBACK_SECRET"} <= read
    shown = cli.build_parser().format_help()
    assert sorted(name for name in read if name not in shown) == []


def test_version_flag_prints_the_distribution_version():
    from importlib.metadata import version

    result = subprocess.run([AUXOT, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"auxot {version('auxot-client')}"


def test_requests_carry_the_client_version_in_the_user_agent():
    from importlib.metadata import version

    assert f"auxot-client/{version('auxot-client')}" == api.USER_AGENT


def test_server_distribution_ships_no_client_code():
    import tomllib
    from fnmatch import fnmatch

    from tests.processes import ROOT

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()
                and any(fnmatch(path.name, pattern) for pattern in include)}
    assert packages == {"auxot", "apikeys", "workflows", "intakes"}
    assert not any(fnmatch("auxot_client", pattern) for pattern in include)
    assert not (ROOT / "auxot" / "client.py").exists() and not (ROOT / "auxot" / "cli.py").exists()
    assert "scripts" not in config["project"]  # `auxot` comes from auxot-client only


# --- pure helpers -------------------------------------------------------------------------
def test_backoff_is_full_jitter_and_honours_retry_after():
    backoff = api.Backoff(base=1.0, cap=8.0)
    delays = [backoff.delay() for _ in range(200)]
    assert max(delays[:1]) <= 1.0
    assert all(0 <= d <= 8.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150  # jittered, not a fixed schedule
    assert min(api.Backoff().delay(retry_after=7) for _ in range(50)) >= 7


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800),
                                               ("1h30m", 5400), ("2h", 7200), ("0.5", 0.5)])
def test_duration_parse(text, seconds):
    assert api.duration_parse(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5d", "m"])
def test_bad_duration_is_rejected(text):
    with pytest.raises(ValueError, match="duration"):
        api.duration_parse(text)


def _signed_request(body: bytes, *, secret: str = SECRET, timestamp: datetime | None = None,
                    sep: bytes = b"\r\n") -> bytes:
    timestamp = timestamp or datetime.now(tz=UTC)
    signature = Webhook(secret).sign("msg_1", timestamp, body.decode())
    head = [b"POST /hooks/auxot HTTP/1.1", b"Host: receiver.example.com",
            b"Content-Type: application/json", f"Content-Length: {len(body)}".encode(),
            b"webhook-id: msg_1", f"webhook-timestamp: {int(timestamp.timestamp())}".encode(),
            f"webhook-signature: {signature}".encode()]
    return sep.join(head) + sep + sep + body


def test_callback_verify_accepts_a_signed_body_and_refuses_tampering():
    body = b'{"work_id": "w1", "status": "completed"}'
    headers, raw_body = api.http_request_parse(_signed_request(body))
    assert api.callback_verify(secret=SECRET, headers=headers, body=raw_body)["status"] == (
        "completed")
    with pytest.raises(api.CallbackVerificationError):
        api.callback_verify(secret=SECRET, headers=headers, body=raw_body.replace(b"w1", b"w2"))
    with pytest.raises(api.CallbackVerificationError):
        api.callback_verify(secret="whsec_" + "A" * 32, headers=headers, body=raw_body)
    stale = _signed_request(body, timestamp=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(api.CallbackVerificationError, match="too old"):
        api.callback_verify(secret=SECRET, headers=api.http_request_parse(stale)[0], body=body)
    headers["webhook-signature"] = "garbage"
    with pytest.raises(api.CallbackVerificationError):
        api.callback_verify(secret=SECRET, headers=headers, body=raw_body)


def test_verify_callback_command(tmp_path):
    body = b'{"work_id": "w1", "status": "failed"}'
    good = subprocess.run([AUXOT, "verify-callback", "--secret", SECRET],
                          input=_signed_request(body, sep=b"\n") + b"\n", capture_output=True,
                          check=False)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {"work_id": "w1", "status": "failed"}
    tampered = _signed_request(body).replace(b"failed", b"passed")
    bad = subprocess.run([AUXOT, "verify-callback"], input=tampered, capture_output=True,
                         env={"AUXOT_CALLBACK_SECRET": SECRET}, check=False)
    assert bad.returncode == 1
    assert b"does not verify" in bad.stderr and bad.stdout == b""
    missing = subprocess.run([AUXOT, "verify-callback"], input=b"", capture_output=True,
                             env={}, check=False)
    assert missing.returncode == 3


def test_verify_callback_prints_a_verification_error_escaped(monkeypatch, capsys):
    """The error's text comes from the webhook library and may quote the request: an escape
    sequence in it must not reach the terminal raw."""
    def refuse(**kwargs):
        raise api.CallbackVerificationError("callback does not verify: \x1b[2J\x1b]0;pwned\x07")

    monkeypatch.setattr(api, "callback_verify", refuse)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_signed_request(b"{}"))))
    assert cli.main(["verify-callback", "--secret", SECRET]) == cli.EXIT_FAILED
    printed = capsys.readouterr().err
    assert "\x1b" not in printed and "\x07" not in printed
    assert "does not verify: \\x1b[2J" in printed


def test_progress_line_on_a_tty_shows_elapsed_status_and_step():
    stream = io.StringIO()
    body = {"status": "running", "diagnosis": "Waiting at step 2.",
            "current_step": {"position": 2, "name": "Wait a moment", "kind": "delay"},
            "steps": [{}, {}]}
    with cli.Progress(stream, tty=True) as progress:
        progress.update(api.Poll(body=body, retry_after=1, wait_max=30))
        time.sleep(0.7)  # the redraw thread updates the elapsed time
    text = stream.getvalue()
    assert "\r\x1b[K[00:00] running · step 2/2 'Wait a moment' (delay)" in text
    assert "[00:00] running step 2/2 'Wait a moment' (delay): Waiting at step 2.\n" in text


def test_plain_lines_when_not_a_tty():
    stream = io.StringIO()
    with cli.Progress(stream, tty=False) as progress:
        for status in ("pending", "pending", "running", "completed"):
            progress.update(api.Poll(body={"status": status, "steps": []}, retry_after=None,
                                     wait_max=None))
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == [
        "pending", "running", "completed"]


def test_a_line_when_the_reason_it_waits_changes_not_when_its_place_moves():
    """A CI log showed one line per status and step: an approval decided, or a wait that
    ended with no worker to take it, left the last line saying it still waited."""
    step = {"position": 2, "name": "Sign-off", "kind": "approval"}
    waits = [{"kind": "approval"}, {"kind": "approval", "decision": "approve"},
             {"kind": "approval", "decision": "approve"},
             {"kind": "provider", "ahead": 9}, {"kind": "provider", "ahead": 8},
             {"kind": "worker", "after": "provider"}]
    stream = io.StringIO()
    with cli.Progress(stream, tty=False) as progress:
        for n, waiting in enumerate(waits):
            progress.update(api.Poll(body={"status": "running", "current_step": step,
                                           "waiting_on": waiting, "diagnosis": f"d{n}",
                                           "steps": [{}, {}]},
                                     retry_after=1, wait_max=30))
    assert [line.rsplit(": ", 1)[1] for line in stream.getvalue().splitlines()] == [
        "d0", "d1", "d3", "d5"]


# --- the poll loop against a scripted server: Retry-After, 503, no wait support ----------
class _Scripted(BaseHTTPRequestHandler):
    script: list = []
    seen: list = []
    seen_headers: list = []

    def do_GET(self):
        self.seen.append(self.path)
        self.seen_headers.append(dict(self.headers))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, body = self.script.pop(0)
        if status is None:  # hang up without an answer: a network error
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body if isinstance(body, bytes) else json.dumps(body).encode())

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


TOKEN = "user.abcdefghijkl." + "A" * 43 + "0a1b2c"


def test_wait_honours_retry_after_and_retries_503(scripted):
    _, base = scripted
    _Scripted.seen = []
    _Scripted.script = [
        (200, {"Retry-After": "7"}, {"status": "pending"}),
        (503, {"Retry-After": "11", "Content-Type": "application/problem+json"},
         {"code": "database_unavailable", "status": 503}),
        (200, {"Retry-After": "3"}, {"status": "running"}),
        (200, {}, {"status": "completed", "output": 42}),
    ]
    sleeps = []
    body = api.Client(base, TOKEN).wait("i", "w", timeout=300, sleep=sleeps.append)
    assert body["output"] == 42
    assert len(sleeps) == 3
    assert sleeps[0] >= 7 and sleeps[1] >= 11 and sleeps[2] >= 3
    assert all("wait=" not in path for path in _Scripted.seen)  # no Auxot-Wait-Max offered


def test_wait_uses_long_poll_when_offered(scripted):
    _, base = scripted
    _Scripted.seen = []
    _Scripted.script = [
        (200, {"Retry-After": "1", "Auxot-Wait-Max": "25"}, {"status": "pending"}),
        (200, {"Auxot-Wait-Max": "25"}, {"status": "completed"}),
    ]
    api.Client(base, TOKEN).wait("i", "w", timeout=300, sleep=lambda s: None)
    assert _Scripted.seen[1].endswith("?wait=25")
    _Scripted.script = [
        (200, {"Auxot-Wait-Max": "25"}, {"status": "pending"}),
        (200, {"Auxot-Wait-Max": "25"}, {"status": "completed"}),
    ]
    api.Client(base, TOKEN).wait("i", "w", timeout=300, sleep=lambda s: None, max_wait=3)
    assert _Scripted.seen[3].endswith("?wait=3")


def test_wait_times_out_with_the_last_state(scripted):
    _, base = scripted
    _Scripted.script = [(200, {"Retry-After": "1"}, {"status": "running"})] * 5
    now = [0.0]
    with pytest.raises(api.WaitTimeout) as exc:
        api.Client(base, TOKEN).wait("i", "w", timeout=3, sleep=lambda s: now.__setitem__(
            0, now[0] + s), clock=lambda: now[0])
    assert exc.value.last == {"status": "running"}


_IN_FLIGHT = (409, {"Retry-After": "1", "Content-Type": "application/problem+json"},
              {"status": 409, "code": "idempotency_in_flight", "detail": "still processing"})
_ACCEPTED = (202, {"Content-Type": "application/json"},
             {"work_id": "w1", "status": "pending", "status_url": "http://x/w1"})


@pytest.mark.parametrize("call", ["trigger", "replay"])
def test_a_trigger_is_retried_under_one_idempotency_key(scripted, call):
    """The first POST may have been accepted before the connection dropped or a proxy
    answered 502: the retries carry the same key, so the server answers the first item
    again instead of running the work twice. Without a key of the caller's, one is made."""
    _, base = scripted
    client = api.Client(base, TOKEN)
    send = (lambda **kw: client.trigger("i", {"n": 1}, **kw)) if call == "trigger" else (
        lambda **kw: client.replay("i", "w", **kw))
    for given in [None, "deploy-4711"]:
        _Scripted.seen_headers = []
        _Scripted.script = [(None, {}, b""),
                            (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"),
                            _IN_FLIGHT, _ACCEPTED]
        sleeps = []
        assert send(idempotency_key=given, sleep=sleeps.append)["work_id"] == "w1"
        keys = [headers.get("Idempotency-Key") for headers in _Scripted.seen_headers]
        assert len(keys) == 4 and len(set(keys)) == 1 and keys[0]
        assert keys[0] == given if given else keys[0].startswith("auxot-client-")
        assert len(sleeps) == 3 and sleeps[2] >= 1  # the 409's Retry-After
    _Scripted.seen_headers = []
    _Scripted.script = [_ACCEPTED, _ACCEPTED]
    send()
    send()
    first, second = (headers["Idempotency-Key"] for headers in _Scripted.seen_headers)
    assert first != second  # two calls are two triggers


def test_a_trigger_that_stays_unreachable_exits_4_naming_its_key(scripted, monkeypatch,
                                                                 capsys):
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    monkeypatch.setattr(api.Backoff, "delay", lambda self, retry_after=None: 0.0)
    _Scripted.seen_headers = []
    _Scripted.script = [(None, {}, b"")] * 8
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_UNAVAILABLE
    key = _Scripted.seen_headers[0]["Idempotency-Key"]
    err = capsys.readouterr().err
    assert f"retry with --idempotency-key {key}" in err and TOKEN not in err
    _Scripted.script = [(429, {"Retry-After": "1"}, {"status": 429, "code": "rate_limited"})] * 8
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_UNAVAILABLE
    assert "--idempotency-key" not in capsys.readouterr().err  # a 429 accepted nothing


@pytest.mark.parametrize("work_id, sent", [
    ("../../../admin/", "/v1/intake/i/work/..%2F..%2F..%2Fadmin%2F"),
    ("w?wait=1#x", "/v1/intake/i/work/w%3Fwait%3D1%23x"),
    ("3f2b8c1e-0000-4000-8000-000000000001",
     "/v1/intake/i/work/3f2b8c1e-0000-4000-8000-000000000001")])
def test_an_id_is_one_path_segment_whatever_it_holds(scripted, work_id, sent):
    """`auxot wait i '../x'` polled another path of the same server (with the key)."""
    _, base = scripted
    _Scripted.seen = []
    _Scripted.script = [(200, {}, {"status": "completed"})]
    api.Client(base, TOKEN).get("i", work_id)
    assert _Scripted.seen == [sent]


def test_a_base_url_under_a_path_prefix_is_kept():
    """Only a /v1 segment is refused (tests/e2e/test_recipes.py): a server mounted under a
    prefix is reached there."""
    assert api.Client("https://example.com/auxot/", TOKEN).base_url == (
        "https://example.com/auxot")
    assert api.Client("https://v1.example.com/v10", TOKEN).base_url == (
        "https://v1.example.com/v10")


def test_a_base_url_with_a_password_is_refused_without_echoing_it(monkeypatch, capsys):
    """requests would send user:pass as Basic auth in place of the key, and the errors
    printed the URL, password included."""
    with pytest.raises(api.ConfigError) as refused:
        api.Client("https://ci:hunter2-secret@auxot.example.com", TOKEN)
    assert "hunter2" not in str(refused.value) and "user:pass@" in str(refused.value)
    monkeypatch.setenv("AUXOT_BASE_URL", "https://ci:hunter2-secret@auxot.example.com")
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    assert cli.main(["wait", "i", "w"]) == cli.EXIT_USAGE
    assert "hunter2" not in capsys.readouterr().err


def test_a_trigger_keeps_retrying_through_a_restart_but_not_past_its_time(scripted):
    """Four quick attempts (1, 2, 4 s apart) failed a CI job whose trigger met a 20 s
    restart; retries now go on for 60 s in all, and stop rather than retry sooner than the
    server's Retry-After."""
    _, base = scripted
    client = api.Client(base, TOKEN)
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    down = (503, {"Retry-After": "5", "Content-Type": "application/problem+json"},
            {"status": 503, "code": "database_unavailable"})
    _Scripted.script = [down] * 4 + [_ACCEPTED]  # 20 s of Retry-After: 5
    assert client.trigger("i", {}, sleep=sleep, clock=lambda: now[0])["work_id"] == "w1"
    assert now[0] >= 20
    now[0] = 0.0
    _Scripted.seen = []
    _Scripted.script = [(503, {"Retry-After": "90"}, {"status": 503})] * 2
    with pytest.raises(api.TransientError) as gave_up:
        client.trigger("i", {}, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 0.0 and len(_Scripted.seen) == 1  # not retried sooner than asked
    assert gave_up.value.idempotency_key.startswith("auxot-client-")
    _Scripted.script = []


def test_run_timeout_bounds_the_trigger_too(monkeypatch, capsys):
    """`auxot run --timeout 2s` against a server that never answers took 2 min: the
    trigger's four attempts of 30 s each came before the timeout started counting."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hung)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hung.release.clear()
    monkeypatch.setenv("AUXOT_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    try:
        started = time.monotonic()
        assert cli.main(["run", "i", "--data", "{}", "--timeout", "2s"]) == cli.EXIT_UNAVAILABLE
        assert time.monotonic() - started < 10  # not the 30 s request timeout, not 2 min
        assert "--idempotency-key auxot-client-" in capsys.readouterr().err
    finally:
        _Hung.release.set()
        server.shutdown()


def test_a_network_error_says_which_way_the_connection_failed():
    """`Cannot reach …: ConnectionError` did not tell a wrong port from a typo in the name."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    cases = [(f"http://127.0.0.1:{port}", "connection refused"),
             ("http://auxot-typo.invalid", "host name was not found (DNS")]
    for base, words in cases:
        with pytest.raises(api.TransientError) as failed:
            api.Client(base, TOKEN, timeout=5).get("i", "w")
        assert words in str(failed.value) and "(ConnectionError)" in str(failed.value)


def test_json_output_says_what_went_wrong_on_stdout_too(scripted, monkeypatch, capsys):
    """With --json a script reads stdout only: on exit 3 or 4 it was empty."""
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    monkeypatch.setattr(api.Backoff, "delay", lambda self, retry_after=None: 0.0)
    problem = {"type": "/v1/problems/not_found", "title": "Not found", "status": 404,
               "detail": "No such intake", "code": "not_found"}
    _Scripted.script = [(404, {"Content-Type": "application/problem+json"}, problem)]
    assert cli.main(["trigger", "i", "--data", "{}", "--json"]) == cli.EXIT_USAGE
    answer = json.loads(capsys.readouterr().out)
    assert answer["error"] == problem and answer["exit_code"] == cli.EXIT_USAGE
    _Scripted.script = [(None, {}, b"")] * 8
    assert cli.main(["trigger", "i", "--data", "{}", "--json"]) == cli.EXIT_UNAVAILABLE
    answer = json.loads(capsys.readouterr().out)
    assert answer["error"]["code"] == "unavailable" and answer["exit_code"] == 4
    assert answer["idempotency_key"].startswith("auxot-client-")
    _Scripted.script = [(404, {"Content-Type": "application/problem+json"}, problem)]
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_USAGE
    assert capsys.readouterr().out == ""  # without --json, stdout stays for results only


def test_a_wait_that_times_out_on_an_unreachable_server_says_so(scripted, monkeypatch,
                                                                 capsys):
    """`still unknown` alone reads as slow work; the job's log must say the server failed."""
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    _Scripted.script = [(503, {"Retry-After": "1", "Content-Type": "application/problem+json"},
                         {"status": 503, "code": "database_unavailable",
                          "detail": "The database could not be reached."})] * 10
    assert cli.main(["wait", "i", "w", "--timeout", "1s"]) == cli.EXIT_TIMEOUT
    err = capsys.readouterr().err
    assert "timed out after 1s" in err
    assert "the last poll failed: HTTP 503: The database could not be reached." in err
    _Scripted.script = [(200, {"Retry-After": "1"}, {"status": "running"})] * 10
    assert cli.main(["wait", "i", "w", "--timeout", "1s"]) == cli.EXIT_TIMEOUT
    assert "last poll failed" not in capsys.readouterr().err  # slow work, not an outage


def test_a_wait_that_times_out_says_how_to_keep_waiting(scripted, monkeypatch, capsys):
    """Exit 2 leaves the work item running: the job's log gives the command that picks it up
    again (as Ctrl-C's does), the server's work id escaped like any text of the server's."""
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    running = (200, {"Retry-After": "1"}, {"status": "running"})
    _Scripted.script = [running] * 10
    assert cli.main(["wait", "i", "w", "--timeout", "1s"]) == cli.EXIT_TIMEOUT
    assert "still running; it continues on the server (auxot wait i w)" in (
        capsys.readouterr().err)
    _Scripted.script = [(202, {"Content-Type": "application/json"},
                         {"work_id": "w\x1b]0;owned\x07", "status": "pending",
                          "status_url": "http://x/w"}), *[running] * 10]
    assert cli.main(["run", "i", "--data", "{}", "--timeout", "1s"]) == cli.EXIT_TIMEOUT
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "work w\\x1b]0;owned\\x07 is still running" in err
    assert "(auxot wait i w\\x1b]0;owned\\x07)" in err


def test_a_404_says_what_to_check_once(scripted, monkeypatch, capsys):
    """Auxot's 404 detail says what to check; the CLI's own hint repeated it almost word for
    word. A 404 that is not Auxot's (a proxy's page, a wrong path) still gets the hint."""
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    detail = ("No such intake or work item for this key: check the intake id (and the work "
              "id), that the intake and its workflow are active, and that this key may use it "
              "(a team key: only its team's intakes).")
    _Scripted.script = [(404, {"Content-Type": "application/problem+json"},
                         {"status": 404, "code": "not_found", "detail": detail}),
                        (404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>")]
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert detail in err and err.count("that the intake and its workflow are active") == 1, err
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_USAGE
    hint = "check the intake id, that the intake and its workflow are active"
    assert hint in capsys.readouterr().err


def test_ctrl_c_while_waiting_says_how_to_wait_again(scripted, monkeypatch, capsys):
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    _Scripted.script = [_ACCEPTED]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api.Client, "wait", interrupted)
    assert cli.main(["run", "i", "--data", "{}"]) == 130  # 128 + SIGINT
    err = capsys.readouterr().err
    assert "work w1 continues on the server (auxot wait i w1)" in err


class _Hung(BaseHTTPRequestHandler):
    release = threading.Event()

    seen: list = []

    def do_GET(self):
        self.seen.append(self.path)
        self.release.wait(60)  # accepts the request, never answers

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_sigterm_while_waiting_says_how_to_wait_again_and_exits_143():
    """A cancelled CI job's SIGTERM ended `auxot wait` silently (killed by the signal): the
    job's log did not say that the work goes on, nor how to pick it up."""
    import os
    import signal

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hung)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hung.release.clear()
    _Hung.seen = []
    env = {**os.environ, "AUXOT_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
           "AUXOT_API_KEY": TOKEN}
    try:
        proc = subprocess.Popen([str(BIN / "auxot"), "wait", "intake-1", "work-1"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not _Hung.seen and time.monotonic() < deadline:  # it is waiting on a poll
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        _Hung.release.set()
        server.shutdown()
    assert proc.returncode == cli.EXIT_TERMINATED
    assert "terminated; work work-1 continues on the server" in err
    assert "auxot wait intake-1 work-1" in err and TOKEN not in err


def test_wait_timeout_is_kept_when_the_server_hangs():
    """`--timeout 2s` must not become the 30 s request timeout (or 30 s more)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hung)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hung.release.clear()
    try:
        client = api.Client(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, timeout=30)
        started = time.monotonic()
        with pytest.raises(api.WaitTimeout, match="ReadTimeout"):
            client.wait("i", "w", timeout=2)
        assert time.monotonic() - started < 5
    finally:
        _Hung.release.set()
        server.shutdown()


# --- a server that is not (or not only) Auxot: the CLI says so, never a traceback ----------
def test_a_redirect_is_not_followed(scripted, monkeypatch, capsys):
    """A redirect would re-send the payload (and, to the same host, the key) elsewhere."""
    _, base = scripted
    _Scripted.seen = []
    _Scripted.script = [(307, {"Location": f"{base}/elsewhere"}, {})] * 2
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    assert cli.main(["trigger", "i", "--data", '{"secret": "payload"}']) == cli.EXIT_USAGE
    assert _Scripted.seen == ["/v1/intake/i"]  # asked once; /elsewhere never
    err = capsys.readouterr().err
    assert "redirects" in err and "AUXOT_BASE_URL" in err


@pytest.mark.parametrize(("argv", "base"), [
    (["trigger", "i", "--data", "{}", "--correlation-id", "deploy\nX-Injected: 1"], None),
    (["run", "i", "--data", "{}", "--idempotency-key", " leading-space"], None),
    (["trigger", "i", "--data", "{}"], "http://auxot example.com"),
    (["wait", "i", "w", "--timeout", "2s"], "http://127.0.0.1:99999")],
    ids=["newline-in-header", "leading-space-in-header", "space-in-host", "bad-port"])
def test_a_request_that_cannot_be_sent_is_a_usage_error_not_an_outage(
        scripted, monkeypatch, capsys, argv, base):
    """requests refuses these before sending anything: retrying cannot help, so exit 3 with
    what to fix, not 4 ("the server stayed unavailable", which CI would retry)."""
    _, scripted_base = scripted
    _Scripted.seen = []
    monkeypatch.setenv("AUXOT_BASE_URL", base or scripted_base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    monkeypatch.setattr(api.Backoff, "delay", lambda *a, **k: pytest.fail("retried"))
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "cannot send the request" in err and "Cannot reach" not in err
    assert "X-Injected" not in err and TOKEN not in err
    assert _Scripted.seen == []


@pytest.mark.parametrize("answer", [
    b"<html>proxy error</html>", b"[1, 2]", b'{"n": 1}', b'{"work_id": "w", "status": 5}',
    b'{"work_id": 7, "status_url": "u", "status": 7}'],
    ids=["html", "array", "not-auxot", "no-status-url", "not-text"])
def test_an_answer_that_is_not_auxots_exits_3_without_a_traceback(scripted, monkeypatch,
                                                                   capsys, answer):
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    _Scripted.script = [(202, {"Content-Type": "application/json"}, answer)]
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_USAGE
    _Scripted.script = [(200, {"Content-Type": "application/json"}, answer)]
    assert cli.main(["wait", "i", "w"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("is not an Auxot answer") == 2 and "Traceback" not in err


def test_an_answer_past_the_size_limit_is_not_read_whole(scripted, monkeypatch, capsys):
    _, base = scripted
    monkeypatch.setattr(api, "MAX_ANSWER_BYTES", 100_000)
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    huge = {"work_id": "w", "status": "completed", "output": "x" * 300_000}
    _Scripted.script = [(200, {"Content-Type": "application/json"}, huge)]
    assert cli.main(["wait", "i", "w"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "larger than 100,000 bytes" in err and "Traceback" not in err
    _Scripted.script = [(200, {"Content-Type": "application/json"}, huge)]
    assert api.Client(base, TOKEN, max_answer_bytes=400_000).wait("i", "w")["output"] == \
        huge["output"]


class _Dripping(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):  # a byte every 0.1 s: each read is well within the timeout
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client hung up: what this test expects

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_server_that_drips_its_answer_is_given_up_on():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = api.Client(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, timeout=1)
        with pytest.raises(api.TransientError, match="took more than 1 s to send its answer"):
            client.trigger("i", {}, attempts=1)
    finally:
        server.shutdown()


def test_server_text_reaches_the_terminal_with_its_control_characters_escaped(
        scripted, monkeypatch, capsys):
    """A comment or an error message is someone's text: an escape sequence in it must not
    retitle, clear or recolour the operator's terminal."""
    _, base = scripted
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    hostile = "\x1b]0;owned\x07\x1b[2J\x1b[32mDeploy approved\u2028\nauxot: fake line\x9b2J"
    _Scripted.script = [(200, {}, {"work_id": "w", "status": "running", "diagnosis": hostile}),
                        (200, {}, {"work_id": "w", "status": "failed", "diagnosis": hostile,
                                   "error": {"code": "rejected"}})]
    monkeypatch.setattr(api.time, "sleep", lambda s: None)
    assert cli.main(["wait", "i", "w"]) == cli.EXIT_FAILED
    _Scripted.script = [(400, {"Content-Type": "application/problem+json"},
                         {"code": "invalid_request", "detail": hostile})]
    assert cli.main(["trigger", "i", "--data", "{}"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u2028" not in err
    assert "\x9b" not in err and "\nauxot: fake line" not in err
    assert err.count("\\x1b]0;owned\\x07") >= 3 and "Deploy approved" in err
    _Scripted.script = [(200, {}, {"work_id": "w", "status": "completed", "output": hostile})]
    assert cli.main(["wait", "i", "w"]) == cli.EXIT_COMPLETED
    out = capsys.readouterr().out
    assert json.loads(out) == hostile  # the output, exactly, as JSON
    assert "\x9b" not in out and "\u2028" not in out and "\x1b" not in out


# --- the real thing: CLI against the live server and a real qcluster ----------------------
@pytest.mark.parametrize("how", ["flag", "file", "stdin"])
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_run_completes_and_prints_output(caller, worker, tmp_path, how):  # noqa: F811
    data = '{"customer": "Acme Corp", "n": 7}'
    (tmp_path / "in.json").write_text(data)
    args = {"flag": ["--data", data], "file": ["--data", f"@{tmp_path / 'in.json'}"],
            "stdin": []}[how]
    result = caller.run([AUXOT, "run", caller.intake_id, *args], stdin=data)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"greeting": "Hello, Acme Corp", "n": 7}
    stderr = result.stderr.decode()
    assert "work_id" in stderr and "completed" in stderr
    assert caller.token not in stderr + result.stdout.decode()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_trigger_then_wait_prints_status_changes(caller):  # noqa: F811
    trig = caller.run([AUXOT, "trigger", caller.intake_id, "--data", '{"customer": "W"}'])
    assert trig.returncode == 0, trig.stderr
    work_id = trig.stdout.decode().strip()
    assert len(work_id) == 36
    waiting = subprocess.Popen([AUXOT, "wait", caller.intake_id, work_id, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=caller.env())
    time.sleep(1)  # it sees `pending` (no worker yet) before the worker starts
    cluster = QCluster().start()
    try:
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        cluster.stop()
    assert waiting.returncode == 0, stderr
    body = json.loads(stdout)
    assert body["status"] == "completed" and body["work_id"] == work_id
    statuses = [line.split()[1].rstrip(":") for line in stderr.decode().splitlines()]
    # Printed once per change of status, step or reason it waits (a delay, then queued once
    # it ended): the long-poll answers each change; a step that takes a moment may still be
    # skipped between two reads.
    assert statuses[0] == "pending" and statuses[-1] == "completed"
    assert set(statuses[1:-1]) <= {"running"} and len(statuses) <= 5, stderr.decode()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_wait_shows_a_state_change_within_moments_not_at_the_long_polls_end(
        caller):  # noqa: F811
    """`auxot wait` (not on a terminal) long-polled 30 s at a time and the server answered
    only when the item finished: `running` was printed up to 30 s late (on a terminal it
    asked every 3 s instead). It now gives the server the `Auxot-State` it last read, and
    the long-poll answers the change: printed within a moment, one request per change."""
    from django.utils import timezone

    from workflows.models import WorkItem

    trig = caller.run([AUXOT, "trigger", caller.slow_intake_id, "--data", "{}"])
    assert trig.returncode == 0, trig.stderr
    work_id = trig.stdout.decode().strip()
    waiting = subprocess.Popen([AUXOT, "wait", caller.slow_intake_id, work_id],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=caller.env())
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        (time.monotonic(), line.decode()) for line in waiting.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines and "pending" in lines[0][1], lines
        time.sleep(2)  # its long-poll is waiting by now
        changed = time.monotonic()
        WorkItem.objects.filter(pk=work_id).update(  # what the engine writes at a delay
            status="running", started_at=timezone.now(), waiting_on="delay",
            waiting_since=timezone.now())
        while len(lines) < 2 and time.monotonic() < changed + 10:
            time.sleep(0.05)
        assert len(lines) == 2 and "running" in lines[1][1], lines
        assert lines[1][0] - changed < 2.5
        finished = time.monotonic()
        WorkItem.objects.filter(pk=work_id).update(
            status="completed", output={"done": True}, finished_at=timezone.now(),
            next_run_at=None, waiting_on="")
        waiting.wait(timeout=10)
        stdout = waiting.stdout.read()  # stderr is the reader's
    finally:
        waiting.kill()
        reader.join(5)
    assert waiting.returncode == 0
    assert json.loads(stdout) == {"done": True}
    assert time.monotonic() - finished < 5
    assert [line.split()[1].rstrip(":") for _, line in lines] == [
        "pending", "running", "completed"]


def test_wait_gives_the_long_poll_the_state_it_last_read(scripted):
    """One request per change, none in between: the first plain poll goes straight to a
    long-poll given its state (no Retry-After sleep), a change is asked about again at once
    with the new state, and a refused (busy) long-poll still waits its Retry-After."""
    _, base = scripted
    _Scripted.seen = []
    offered = {"Auxot-Wait-Max": "25", "Retry-After": "9"}
    _Scripted.script = [
        (200, {**offered, "Auxot-State": "pending.0.-"}, {"status": "pending"}),
        (200, {**offered, "Auxot-State": "running.1.delay"}, {"status": "running"}),
        (200, {**offered, "Auxot-State": "running.1.delay", "Auxot-Wait-Refused": "busy"},
         {"status": "running"}),
        (200, {**offered, "Auxot-State": "completed.2.-"}, {"status": "completed"}),
    ]
    sleeps = []
    api.Client(base, TOKEN).wait("i", "w", timeout=300, sleep=sleeps.append)
    assert _Scripted.seen[0].endswith("/work/w")
    assert _Scripted.seen[1].endswith("?wait=25&state=pending.0.-")
    assert _Scripted.seen[2].endswith("?wait=25&state=running.1.delay")
    assert _Scripted.seen[3].endswith("?wait=25&state=running.1.delay")
    assert len(sleeps) == 1 and sleeps[0] >= 9  # only after the busy answer


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_trigger_json_prints_the_202_body(caller):  # noqa: F811
    result = caller.run([AUXOT, "trigger", caller.intake_id, "--json", "--data", "{}",
                         "--correlation-id", "deploy-1"])
    body = json.loads(result.stdout)
    assert result.returncode == 0
    assert body["status"] == "pending" and body["status_url"].endswith(body["work_id"])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_failed_work_exits_1(caller, worker):  # noqa: F811
    result = caller.run([AUXOT, "run", caller.failing_intake_id, "--data", "{}"])
    assert result.returncode == 1
    assert b"failed" in result.stderr and b"bad_expression" in result.stderr


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_timeout_exits_2(caller, worker):  # noqa: F811
    started = time.monotonic()
    result = caller.run([AUXOT, "run", caller.slow_intake_id, "--data", "{}", "--timeout",
                         "3s"])
    assert result.returncode == 2, result.stderr
    assert b"timed out" in result.stderr and b"still running" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_usage_auth_and_not_found_exit_3_without_printing_the_key(caller):  # noqa: F811
    revoked_like = caller.token[:-6] + ("000000" if not caller.token.endswith("000000")
                                        else "111111")
    cases = [
        ([AUXOT, "trigger", caller.intake_id, "--data", "{nope"], {}),
        ([AUXOT, "wait", caller.intake_id, "w", "--timeout", "soon"], {}),
        ([AUXOT, "trigger", caller.intake_id, "--data", "{}"], {"AUXOT_API_KEY": revoked_like}),
        ([AUXOT, "trigger", "00000000-0000-0000-0000-000000000000", "--data", "{}"], {}),
        ([AUXOT, "wait", caller.intake_id, "00000000-0000-0000-0000-000000000000"], {}),
        ([AUXOT, "trigger", caller.intake_id], {"AUXOT_BASE_URL": ""}),
        ([AUXOT, "frobnicate"], {}),
    ]
    for args, env in cases:
        result = caller.run(args, stdin="", **env)
        output = (result.stdout + result.stderr).decode()
        assert result.returncode == 3, (args, output)
        assert caller.token[20:] not in output and revoked_like[20:] not in output


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_bad_checksum_key_is_refused_locally_and_unknown_key_gets_401(caller):  # noqa: F811
    from apikeys.tokens import token_generate

    unknown = token_generate("team")  # well formed, never issued
    result = caller.run([AUXOT, "trigger", caller.intake_id, "--data", "{}"],
                        AUXOT_API_KEY=unknown)
    assert result.returncode == 3
    assert b"HTTP 401" in result.stderr and b"AUXOT_API_KEY" in result.stderr
    assert unknown.encode() not in result.stderr


@pytest.mark.parametrize("argv", [["run", "", "--data", "{}"], ["trigger", "  "],
                                  ["wait", "", "w"], ["wait", "i", ""], ["replay", ""]])
def test_an_empty_id_is_refused_before_anything_is_sent(scripted, monkeypatch, capsys, argv):
    """`auxot run "$AUXOT_INTAKE_ID"` with the variable unset sent /v1/intake//… and met a
    404 that blamed the key or the intake; it is a usage error naming the variable."""
    _, base = scripted
    _Scripted.seen = []
    monkeypatch.setenv("AUXOT_BASE_URL", base)
    monkeypatch.setenv("AUXOT_API_KEY", TOKEN)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_USAGE and _Scripted.seen == []
    err = capsys.readouterr().err
    assert "is empty" in err
    assert ("$AUXOT_INTAKE_ID" in err) == (argv[0] != "replay" and argv[1].strip() == "")


def test_a_closed_stdin_is_no_input_not_a_traceback(scripted, monkeypatch):
    """Started with stdin closed (`0<&-`, some supervisors), `auxot trigger` died with an
    AttributeError traceback and exit 1, which reads as "the work failed". No --data and
    no stdin is no input ({}); `--data -` and verify-callback say stdin is closed (exit 3)."""
    _, base = scripted
    _Scripted.script = [(202, {"Content-Type": "application/json"},
                         {"work_id": "w", "status": "pending", "status_url": f"{base}/x"})]
    env = {"PATH": str(BIN), "AUXOT_BASE_URL": base, "AUXOT_API_KEY": TOKEN,
           "AUXOT_CALLBACK_SECRET": "whsec_" + "A" * 43 + "="}

    def auxot(*args):
        return subprocess.run([str(BIN / "auxot"), *args], stdin=None, env=env, text=True,
                              capture_output=True, timeout=30, close_fds=True,
                              preexec_fn=lambda: os.close(0))

    done = auxot("trigger", "i")
    assert (done.returncode, done.stdout.strip()) == (0, "w"), done.stderr
    for args in (("trigger", "i", "--data", "-"), ("verify-callback",)):
        done = auxot(*args)
        assert done.returncode == cli.EXIT_USAGE and "stdin, which is closed" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr


def test_every_subcommand_and_option_of_the_cli_is_in_the_readme():
    """The README's `auxot` section is the command's manual: `verify-callback --secret` was
    in the parser and nowhere in it."""
    import argparse

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    parser = cli.build_parser()
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    assert {"trigger", "wait", "run", "replay", "verify-callback"} <= set(commands.choices)
    missing = [f"auxot {name}" for name in commands.choices if f"auxot {name}" not in readme]
    for name, sub in commands.choices.items():
        missing += [f"auxot {name} {option}" for action in sub._actions
                    for option in action.option_strings
                    if option.startswith("--") and option != "--help"
                    and not re.search(rf"{re.escape(option)}\b", readme)]
    assert missing == []
