"""`manage.py demo`: migrate, seed the demo, print how to use it, run web + worker.

Before anything else it checks that the web server can listen on its port: "ready" and the
curl lines are never printed for a server that cannot start. If the web server or the
worker stops by itself, the other one is stopped and the command exits non-zero.
"""

import argparse
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError

from intakes.demo.seed import DEMO_ENV, demo_refusal, demo_seed
from workflows.cluster import descendants

HOST = "127.0.0.1"
ANOTHER_PORT = "pick another port: PORT=8080 make run"


def _port_number(value: str) -> int:
    """--port (and PORT, its default): a number, or a one-line error that says what to set."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"PORT must be a port number (got {value!r}): e.g. PORT=8080 make run") from None


def port_refusal(host: str, port: int) -> str | None:
    """Why the web server could not listen on host:port (one line naming the port and the
    way out), or None when it can."""
    if not 0 < port < 65536:
        return f"Port {port} is not a TCP port (1-65535): {ANOTHER_PORT}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As runserver binds (socketserver's allow_reuse_address): a port the last run left
        # in TIME_WAIT is free for it, so it is free here too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"Port {port} on {host} is already in use (another server, or another "
                        f"make run?): stop it, or {ANOTHER_PORT}")
            return f"Cannot listen on {host}:{port} ({exc.strerror or exc}): {ANOTHER_PORT}"
    return None


def database_refusal(exc: Exception, db: dict) -> str:
    """One line for a database the demo cannot use (DATABASE_URL's: one that does not exist
    yet, a server that is not running), instead of a page of traceback. Never the password:
    the driver's message names host, port and database only."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if db["ENGINE"].endswith("sqlite3"):
        return f"Cannot use the demo's SQLite file {db['NAME']}: {reason}"
    host, port = db.get("HOST") or "localhost", db.get("PORT") or 5432
    where = f"database {db['NAME']} on {host}:{port}"
    if "does not exist" in reason and f'"{db["NAME"]}"' in reason:
        user = f" -U {db['USER']}" if db.get("USER") else ""
        return (f"The {where} (DATABASE_URL) does not exist: create it first "
                f"(createdb -h {host} -p {port}{user} {db['NAME']}), then make run again.")
    return f"Cannot use the {where} (DATABASE_URL): {reason}"


def _refused(demo, intake) -> str:
    """A line under an intake's curl when the demo's key gets 404 on it ("" when it may call
    it): the seed keeps what an admin changed, and a curl that 404s must say why."""
    reason = demo_refusal(intake=intake, key=demo.key)
    if reason is None:
        return ""
    return f"  ! 404 for this key on intake {intake.pk}: {reason}.\n"


class Command(BaseCommand):
    help = "Set up and run the demo: web server and qcluster together (Ctrl-C stops both)."

    def add_arguments(self, parser):
        # PORT=abc make run: one line from argparse, not a ValueError's traceback
        parser.add_argument("--port", type=_port_number, default=os.environ.get("PORT", "8000"))
        parser.add_argument("--no-serve", action="store_true", help="Seed and print only.")

    def handle(self, *args, **options):
        serve = not options["no_serve"]
        if serve and (refusal := port_refusal(HOST, options["port"])):
            raise CommandError(refusal)  # before seeding, and before anything says "ready"
        base = f"http://{HOST}:{options['port']}"
        try:
            call_command("migrate", interactive=False, verbosity=0)
            demo = demo_seed(base_url=base)
        except OperationalError as exc:  # DATABASE_URL names a database not there (yet)
            raise CommandError(database_refusal(exc, settings.DATABASES["default"])) from None
        except KeyboardInterrupt:  # the first run's setup takes a while: no traceback
            raise CommandError("Interrupted while setting up, before anything started: "
                               "make run again to finish (what was done is kept).") from None
        self.stdout.write(self._instructions(base, demo))
        self.stdout.write(self._examples(base, demo))
        if not serve:
            return
        self.stdout.write("Web and worker are starting; Ctrl-C stops both.\n")
        self._serve(self._children(options["port"]), base)

    def _instructions(self, base: str, demo) -> str:
        intake = demo.intake.pk
        return f"""
Auxot demo is ready.

  Admin:      {base}/admin/   (user {demo.username}, password {demo.password})
  Intake id:  {intake}   (workflow: {demo.intake.workflow.name})
{_refused(demo, demo.intake)}  API key:    {demo.token}
              (personal key of {demo.username}; kept in var/demo-secrets.json, git-ignored)

Trigger:

  curl -i -X POST "{base}/v1/intake/{intake}" \\
    -H "Authorization: Bearer {demo.token}" \\
    -H "Content-Type: application/json" \\
    -d '{{"ticket_id":"SUP-1042","customer":"Acme Corp"}}'

Poll (swap WORK_ID from the 202 body):

  curl "{base}/v1/intake/{intake}/work/WORK_ID" \\
    -H "Authorization: Bearer {demo.token}"

{self._callbacks(base, demo)}
Or with the `auxot` command (trigger + wait; see README "The auxot command"). It is the
auxot-client package, already in .venv; elsewhere: pip install ./clients/python

  export AUXOT_BASE_URL={base} AUXOT_INTAKE_ID={intake} AUXOT_API_KEY={demo.token}
  .venv/bin/auxot run "$AUXOT_INTAKE_ID" --data '{{"customer":"Acme Corp"}}'

API docs: {base}/v1/docs

"""

    def _callbacks(self, base: str, demo) -> str:
        intake = demo.intake.pk
        if demo.signing_secret_is_new:
            shown = (f"{demo.signing_secret}\n              (new: shown once here; also kept "
                     "in var/demo-secrets.json)")
        elif demo.signing_secret_changed_in_admin:
            shown = ("rotated in the admin since the last run (the admin showed it once); "
                     "kept, not\n              rotated again; var/demo-secrets.json now has it")
        else:
            shown = "unchanged; see var/demo-secrets.json (rotate it in the admin)"
        return f"""Callbacks (signed per Standard Webhooks; the demo allows http:// and loopback):

  Signing secret: {shown}
  1. Start a receiver that verifies and prints callbacks:
       .venv/bin/python examples/receiver.py --port 9000 --demo-intake {intake}
  2. Point work at it, per request (add to the trigger curl):
       -H "Auxot-Callback-Url: http://127.0.0.1:9000/hook"
     or for every item: {base}/admin/intakes/intake/{intake}/change/ -> Callback URL
"""

    def _examples(self, base: str, demo) -> str:
        from intakes.demo.steps import AGENT_ENABLE, ECHO_PATH

        where = ("this demo's own echo endpoint: nothing leaves this machine"
                 if demo.http_url == f"{base}{ECHO_PATH}" else "AUXOT_DEMO_HTTP_URL")
        lines = ["One example workflow per step kind (same key):", "",
                 f"  (the http example posts to {demo.http_url}, {where})", ""]
        for example in demo.examples:
            url = f"{base}/v1/intake/{example.intake.pk}"
            if example.active:
                lines.append(f"  {example.kind:<9} curl -X POST {url} -H \"Authorization: "
                             f"Bearer {demo.token}\" -H 'Content-Type: application/json' "
                             f"-d '{example.body}'")
                if refused := _refused(demo, example.intake):
                    lines.append(refused.rstrip("\n"))
            else:
                lines.append(f"  {example.kind:<9} inactive; enable it with: {AGENT_ENABLE}")
        return "\n".join(lines) + "\n\n"

    def _children(self, port: int) -> dict[str, list[str]]:
        manage = [sys.executable, "manage.py"]
        return {"web server": [*manage, "runserver", "--noreload", f"{HOST}:{port}"],
                "worker": [*manage, "qcluster"]}

    def _serve(self, children: dict[str, list[str]], base: str) -> None:
        """Run the children until Ctrl-C (exit 0) or until one stops by itself: then stop the
        others and exit non-zero (runserver exits 1 on a port taken since the check).

        They get DEMO_ENV and AUXOT_PUBLIC_BASE_URL = `base` unless the environment sets them:
        links that outlive a request (a poll's `approve_url`, a callback's links) are built
        from it, and without it they would be bare paths."""
        # Ctrl-C or a SIGTERM stops both children (also when SIGINT was inherited ignored).
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT,
                                                                      signal.SIGTERM)}
        for signum in previous:
            signal.signal(signum, signal.default_int_handler)
        env = {**DEMO_ENV, "AUXOT_PUBLIC_BASE_URL": base, **os.environ}
        procs = {name: subprocess.Popen(argv, env=env) for name, argv in children.items()}
        ended: list[tuple[str, int]] = []
        try:
            while not ended:
                time.sleep(0.5)
                ended = [(name, p.returncode) for name, p in procs.items()
                         if p.poll() is not None]
        except KeyboardInterrupt:
            self.stdout.write(f"Stopping: the worker lets running steps finish (up to "
                              f"{settings.AUXOT_WORKER_GRACE_SECONDS:g} s); Ctrl-C again "
                              "stops everything at once.\n")
        finally:
            self._stop(procs)
            for signum, handler in previous.items():
                if handler is not None:
                    signal.signal(signum, handler)
        if ended:
            name, code = ended[0]
            status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            hint = (" If it says the port is in use: PORT=8080 make run."
                    if name == "web server" else "")
            raise CommandError(f"The demo's {name} stopped ({status}), so the "
                               f"demo stopped too: see its error above.{hint}")

    def _stop(self, procs: dict[str, subprocess.Popen]) -> None:
        """SIGTERM every child and wait for it (qcluster bounds its own stop by the grace
        period). A second Ctrl-C meanwhile kills each child with everything it started:
        once the command returns, nothing of the demo runs on (and no traceback)."""
        for p in procs.values():
            if p.poll() is None:
                p.terminate()  # SIGTERM: graceful for qcluster, immediate for runserver
        try:
            for p in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=settings.AUXOT_WORKER_GRACE_SECONDS + 5)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third one must not cut this short
            self.stdout.write("Ctrl-C again: stopping the web server and the worker now.\n")
        for p in procs.values():
            _kill_tree(p)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a child that still runs and its descendants (qcluster's sentinel and workers
    would outlive their parent), then reap it and wait until they are gone too."""
    pids: list[int] = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            pids = descendants(proc.pid) or []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5  # SIGKILL is delivered, not done, when os.kill returns
    while (pids := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether pid still runs (a zombie has stopped: only its reaping is left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False
