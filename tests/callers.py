"""Fixtures for tests that act as an outside caller: a live server, a real qcluster, and
the env a CI job or cron host would have (AUXOT_BASE_URL, AUXOT_API_KEY, AUXOT_INTAKE_ID)."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from apikeys.services import apikey_issue
from intakes.services import intake_create
from tests.conftest import GREETING, make_workflow
from tests.processes import ROOT, QCluster, wait_for
from workflows.models import WorkerHeartbeat

BIN = Path(sys.executable).parent  # the venv's bin: `auxot` lives here


@dataclass
class Caller:
    base_url: str
    token: str
    intake_id: str  # transform + 1 s delay: completes
    failing_intake_id: str  # a bad jmespath expression: fails at step 1
    slow_intake_id: str  # a 10 minute delay: never finishes within a test

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AUXOT_", "DJANGO_", "DATABASE_"))}
        env.update({"AUXOT_BASE_URL": self.base_url, "AUXOT_API_KEY": self.token,
                    "AUXOT_INTAKE_ID": self.intake_id,
                    "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
        env.update(extra)
        return env

    def run(self, args: list[str], *, stdin: bytes | str | None = None, timeout: float = 60,
            **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, input=stdin.encode() if isinstance(stdin, str) else stdin,
                              capture_output=True, env=self.env(**env), cwd=ROOT,
                              timeout=timeout, check=False)


@pytest.fixture
def caller(live_server, cast) -> Caller:
    def intake(name, steps):
        return str(intake_create(org=cast.org_a, workflow=make_workflow(cast.org_a, steps,
                                                                        name=name),
                                 name=name).pk)

    token = apikey_issue(org=cast.org_a, label="ci", team=cast.team_a).token
    ok = intake("Greet", [("transform", {"expression": GREETING}), ("delay", {"seconds": 1})])
    bad = intake("Broken", [("transform", {"expression": "input.["})])
    slow = intake("Slow", [("delay", {"seconds": 600})])
    _assign_team(cast.team_a, [ok, bad, slow])
    return Caller(base_url=live_server.url, token=token, intake_id=ok, failing_intake_id=bad,
                  slow_intake_id=slow)


def _assign_team(team, intake_ids: list[str]) -> None:
    from intakes.models import Intake

    Intake.objects.filter(pk__in=intake_ids).update(team=team)  # a team key: team intakes


@pytest.fixture
def worker():
    """A qcluster that is up: its first heartbeat is written. A test that starts on a busy
    machine before then sees its items `pending` ("no worker heartbeat") for seconds."""
    cluster = QCluster().start()
    try:
        wait_for(lambda: cluster.proc.poll() is not None or WorkerHeartbeat.objects.filter(
            name__endswith=f":{cluster.proc.pid}").exists(), timeout=60,
            what="the worker's first heartbeat")
        assert cluster.proc.poll() is None, cluster.proc.stderr.read().decode()
        yield cluster
    finally:
        cluster.stop()
