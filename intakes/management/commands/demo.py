"""`manage.py demo`: migrate, seed the demo, print how to use it, run web + worker."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from intakes.demo.seed import DEMO_ENV, demo_seed


class Command(BaseCommand):
    help = "Set up and run the demo: web server and qcluster together (Ctrl-C stops both)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-serve", action="store_true", help="Seed and print only.")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        base = f"http://127.0.0.1:{options['port']}"
        demo = demo_seed(base_url=base)
        self.stdout.write(self._instructions(base, demo))
        self.stdout.write(self._examples(base, demo))
        if options["no_serve"]:
            return
        self.stdout.write("Web and worker are starting; Ctrl-C stops both.\n")
        self._serve(options["port"])

    def _instructions(self, base: str, demo) -> str:
        intake = demo.intake.pk
        return f"""
Auxot demo is ready.

  Admin:      {base}/admin/   (user {demo.username}, password {demo.password})
  Intake id:  {intake}   (workflow: {demo.intake.workflow.name})
  API key:    {demo.token}
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
            else:
                lines.append(f"  {example.kind:<9} inactive; enable it with: {AGENT_ENABLE}")
        return "\n".join(lines) + "\n\n"

    def _serve(self, port: int) -> None:
        # Ctrl-C or a SIGTERM stops both children (also when SIGINT was inherited ignored).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
        manage = [sys.executable, "manage.py"]
        for name, value in DEMO_ENV.items():
            os.environ.setdefault(name, value)  # web and worker inherit it
        procs = [
            subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"]),
            subprocess.Popen([*manage, "qcluster"]),
        ]
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()  # SIGTERM: graceful for qcluster, immediate for runserver
            for p in procs:
                try:
                    # qcluster bounds its own stop by the grace period: wait that long.
                    p.wait(timeout=settings.AUXOT_WORKER_GRACE_SECONDS + 5)
                except subprocess.TimeoutExpired:
                    p.kill()
