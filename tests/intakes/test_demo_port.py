"""`make run` on a port already in use: one clear line and a non-zero exit, before anything
is seeded or says "ready"; and a web server (or worker) that stops by itself stops the demo
with a non-zero exit, not 0."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError

from intakes.management.commands import demo as demo_command
from intakes.models import Intake

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port():
    """A free port, then taken: bound and listening, as another server holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def demo_env(monkeypatch, tmp_path):
    monkeypatch.setattr("intakes.demo.seed.SECRETS_FILE", tmp_path / "demo-secrets.json")
    for name in demo_command.DEMO_ENV:
        monkeypatch.delenv(name, raising=False)


def test_port_refusal_names_the_port_and_the_way_out(busy_port):
    refusal = demo_command.port_refusal("127.0.0.1", busy_port)
    assert f"Port {busy_port} on 127.0.0.1 is already in use" in refusal
    assert "PORT=8080 make run" in refusal and "\n" not in refusal
    assert "PORT=8080 make run" in demo_command.port_refusal("127.0.0.1", 70000)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert demo_command.port_refusal("127.0.0.1", free) is None


def test_demo_on_a_busy_port_seeds_nothing_and_never_says_ready(db, demo_env, busy_port):
    out = StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("demo", "--port", str(busy_port), stdout=out)
    assert str(busy_port) in str(refused.value) and "PORT=8080 make run" in str(refused.value)
    assert "ready" not in out.getvalue() and "curl" not in out.getvalue()
    assert not Intake.objects.exists()


def test_make_run_on_a_busy_port_exits_non_zero_with_one_line(tmp_path, busy_port):
    """The command as `make run` runs it (PORT in the environment), in its own process."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(DJANGO_SETTINGS_MODULE="auxot.settings", DEBUG="1", PORT=str(busy_port),
               DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    result = subprocess.run([sys.executable, "manage.py", "demo"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert f"Port {busy_port}" in line and "already in use" in line
    assert "PORT=8080 make run" in line
    assert "ready" not in result.stdout.lower() and "curl" not in result.stdout
    assert not (tmp_path / "demo.sqlite3").exists() or (
        tmp_path / "demo.sqlite3").stat().st_size == 0  # not even migrated


def test_a_web_server_that_dies_at_start_stops_the_worker_and_the_demo(monkeypatch):
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(demo_command.subprocess, "Popen", Recorded)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    children = {"web server": [sys.executable, "-c", "import sys; sys.exit(1)"],
                "worker": [sys.executable, "-c", "import time; time.sleep(60)"]}
    with pytest.raises(CommandError) as stopped:
        demo_command.Command()._serve(children, "http://127.0.0.1:8000")
    assert "web server stopped (exit status 1)" in str(stopped.value)
    assert "PORT=8080 make run" in str(stopped.value)
    worker = started[1]
    assert worker.returncode is not None  # stopped, not left running
    assert {s: signal.getsignal(s) for s in handlers} == handlers


# A worker busy with a step: it lets SIGINT and SIGTERM pass (qcluster lets running steps
# finish, up to the grace period) and has a process of its own, as qcluster's sentinel.
HOLDS_ON = ("import signal, time\n"
            "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\n")
WORKER_HOLDS_ON = HOLDS_ON + """import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {child.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its reaping is left


def test_a_second_ctrl_c_stops_everything_at_once_without_a_traceback(tmp_path):
    """Ctrl-C, then Ctrl-C again while the worker finishes a step: the demo printed a
    KeyboardInterrupt traceback and returned while the worker and its processes ran on."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see the worker's own processes")
    pids = tmp_path / "pids"
    children = {"web server": [sys.executable, "-c", "import time; time.sleep(120)"],
                "worker": [sys.executable, "-c", WORKER_HOLDS_ON, str(pids),
                           HOLDS_ON + "time.sleep(120)"]}

    pressed: list[float] = []

    def press_ctrl_c_twice():
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(2):
            pressed.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)

    threading.Thread(target=press_ctrl_c_twice, daemon=True).start()
    out = StringIO()
    try:
        demo_command.Command(stdout=out)._serve(children, "http://127.0.0.1:8000")
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped from the demo as a traceback")
    finally:
        left = [int(pid) for pid in pids.read_text().split()] if pids.exists() else []
        running = [pid for pid in left if _running(pid)]
        for pid in running:
            os.kill(pid, signal.SIGKILL)
    assert len(left) == 2 and running == [], "the worker or its process outlived the demo"
    # At once, not after the worker's grace period (AUXOT_WORKER_GRACE_SECONDS + 5: 35 s).
    assert len(pressed) == 2 and time.monotonic() - pressed[1] < 20
    assert "Ctrl-C again stops everything at once" in out.getvalue()
    assert "stopping the web server and the worker now" in out.getvalue()


def test_the_real_web_server_on_a_port_taken_after_the_check_exits_non_zero(
        db, demo_env, monkeypatch, busy_port, tmp_path):
    """The check and runserver's own bind are moments apart: if another server takes the
    port in between, runserver exits 1, and so does the demo (it used to exit 0)."""
    monkeypatch.setattr(demo_command, "port_refusal", lambda host, port: None)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'children.sqlite3'}")
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "auxot.settings")
    monkeypatch.setattr(demo_command.Command, "_children", lambda self, port: {
        "web server": [sys.executable, "manage.py", "runserver", "--noreload",
                       f"127.0.0.1:{port}", "--skip-checks"],
        "worker": [sys.executable, "-c", "import time; time.sleep(60)"]})
    monkeypatch.chdir(ROOT)
    with pytest.raises(CommandError) as stopped:
        call_command("demo", "--port", str(busy_port), stdout=StringIO())
    assert "web server stopped (exit status 1)" in str(stopped.value)


def _env_seen_by_children(tmp_path, base: str) -> dict:
    """What the web server and the worker find in their environment."""
    import json

    seen = tmp_path / "env.json"
    names = ["AUXOT_PUBLIC_BASE_URL", *demo_command.DEMO_ENV]
    dump = (f"import json, os, sys; json.dump({{n: os.environ.get(n) for n in {names!r}}}, "
            f"open({str(seen)!r}, 'w')); sys.exit(1)")
    children = {"web server": [sys.executable, "-c", dump],
                "worker": [sys.executable, "-c", "import time; time.sleep(60)"]}
    with pytest.raises(CommandError):
        demo_command.Command()._serve(children, base)
    return json.loads(seen.read_text())


def test_the_demos_processes_build_absolute_links_from_its_own_address(tmp_path, monkeypatch):
    """A poll's `approve_url` under `make run` was a bare path (/admin/workflows/...): the
    web and worker had no AUXOT_PUBLIC_BASE_URL. They get the demo's address, and the demo's
    loopback settings, without the parent's environment changing."""
    for name in ["AUXOT_PUBLIC_BASE_URL", *demo_command.DEMO_ENV]:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    seen = _env_seen_by_children(tmp_path, "http://127.0.0.1:8123")
    assert seen == {"AUXOT_PUBLIC_BASE_URL": "http://127.0.0.1:8123", **demo_command.DEMO_ENV}
    assert "AUXOT_PUBLIC_BASE_URL" not in os.environ


def test_an_operators_own_settings_win_over_the_demos(tmp_path, monkeypatch):
    monkeypatch.setenv("AUXOT_PUBLIC_BASE_URL", "https://auxot.example.com")
    monkeypatch.setenv("AUXOT_CALLBACK_RETRY_SCHEDULE", "0,1")
    seen = _env_seen_by_children(tmp_path, "http://127.0.0.1:8123")
    assert seen["AUXOT_PUBLIC_BASE_URL"] == "https://auxot.example.com"
    assert seen["AUXOT_CALLBACK_RETRY_SCHEDULE"] == "0,1"


def test_ctrl_c_while_setting_up_says_so_in_one_line(db, demo_env, monkeypatch):
    """The first `make run` migrates and seeds for a while before anything starts; a
    Ctrl-C then printed a KeyboardInterrupt traceback."""
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_command, "demo_seed", interrupted)
    out = StringIO()
    try:
        call_command("demo", "--no-serve", "--port", "8765", stdout=out)
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C while setting up escaped from the demo as a traceback")
    except CommandError as exc:
        stopped = str(exc)
    else:
        pytest.fail("the demo went on after a Ctrl-C")
    assert "Interrupted while setting up" in stopped
    assert "make run again" in stopped and "\n" not in stopped
    assert "ready" not in out.getvalue()


PG = {"ENGINE": "django.db.backends.postgresql", "NAME": "auxot_try", "HOST": "127.0.0.1",
      "PORT": 5432, "USER": "postgres", "PASSWORD": "hunter2-not-shown"}


def test_database_refusal_says_how_to_create_a_missing_database():
    missing = OperationalError('connection failed: connection to server at "127.0.0.1", port '
                               '5432 failed: FATAL:  database "auxot_try" does not exist')
    line = demo_command.database_refusal(missing, PG)
    assert line == ("The database auxot_try on 127.0.0.1:5432 (DATABASE_URL) does not exist: "
                    "create it first (createdb -h 127.0.0.1 -p 5432 -U postgres auxot_try), "
                    "then make run again.")
    down = OperationalError("connection failed: connection to server at \"127.0.0.1\", port "
                            "5432 failed: Connection refused\n\tIs the server running?")
    line = demo_command.database_refusal(down, PG)
    assert line.startswith("Cannot use the database auxot_try on 127.0.0.1:5432 (DATABASE_URL)")
    assert "Is the server running?" in line and "\n" not in line
    assert "hunter2" not in line


def test_demo_on_a_database_it_cannot_use_says_so_in_one_line(db, demo_env, monkeypatch):
    """`DATABASE_URL=postgres://…/new make run` on a database not created yet printed a page
    of traceback; it is one line, and nothing says "ready"."""
    def migrate(*args, **kwargs):
        raise OperationalError('connection failed: FATAL:  database "auxot_try" does not exist')

    monkeypatch.setattr(demo_command, "call_command", migrate)
    monkeypatch.setitem(demo_command.settings.DATABASES, "default", PG)
    out = StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("demo", "--no-serve", stdout=out)
    assert "does not exist: create it first (createdb" in str(refused.value)
    assert "ready" not in out.getvalue() and "curl" not in out.getvalue()


def test_a_port_that_is_not_a_number_is_one_line_not_a_traceback(db, demo_env, monkeypatch):
    """`PORT=abc make run` stopped with a ValueError's traceback while the command read its
    arguments; it is one line naming PORT, and nothing is seeded."""
    monkeypatch.setenv("PORT", "abc")
    with pytest.raises(CommandError) as refused:
        call_command("demo", "--no-serve", stdout=StringIO())
    assert "PORT must be a port number (got 'abc'): e.g. PORT=8080 make run" in str(
        refused.value)
    assert not Intake.objects.exists()
