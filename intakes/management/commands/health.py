"""`manage.py health`: the readiness checks for a process supervisor (exit 0 ready, 1 not).

On a worker host, `--this-host` makes the worker check look at this host's qcluster
heartbeat only, so a supervisor restarts the right machine's worker.
"""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from intakes.ops.checks import CHECKS, readiness
from intakes.ops.checks import this_host as host_name


class Command(BaseCommand):
    help = "Run the readiness checks (as GET /readyz does); exit 0 when ready, 1 when not."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--checks", default="",
                            help=f"Comma-separated subset of: {', '.join(CHECKS)} (default all).")
        parser.add_argument("--this-host", action="store_true",
                            help="The worker check counts only this host's qcluster heartbeat.")

    def handle(self, *args, checks: str, this_host: bool, **options) -> None:
        names = [n.strip() for n in checks.split(",") if n.strip()]
        unknown = sorted(set(names) - set(CHECKS))
        if unknown:
            raise CommandError(f"unknown check(s) {', '.join(unknown)}; "
                               f"the checks are {', '.join(CHECKS)}")
        ready, body = readiness(names or None, host=host_name() if this_host else None)
        self.stdout.write(json.dumps(body, indent=2))
        if not ready:
            sys.exit(1)
