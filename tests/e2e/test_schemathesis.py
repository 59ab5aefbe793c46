"""schemathesis (all checks, stateful trigger -> poll link) against the live API: no server
errors and no answer that contradicts /v1/schema."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apikeys.services import apikey_issue
from intakes.services import intake_create
from tests.conftest import make_workflow
from tests.processes import QCluster

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_server_errors_or_schema_violations(live_server, cast, settings,
                                                                 tmp_path):
    settings.AUXOT_RATE_LIMIT_KEY = 0  # the fuzzer is one fast caller; limits are tested apart
    settings.AUXOT_RATE_LIMIT_INTAKE = 0
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Fuzz")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="fuzz")
    token = apikey_issue(org=cast.org_a, label="fuzz", user=cast.member_a).token
    cluster = QCluster().start()  # items complete, so ?wait= answers at once
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    env = {**os.environ, "AUXOT_SCHEMATHESIS_KEY": token,
           "AUXOT_SCHEMATHESIS_INTAKE": str(intake.pk), "SCHEMATHESIS_HOOKS": ""}
    try:
        run = subprocess.run(
            [binary, "--config-file", str(CONFIG), "run", f"{live_server.url}/v1/schema",
             "--url", live_server.url, "--checks", "all", "--max-examples", "40",
             "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1",
             "--seed", "20261129", "--request-timeout", "40",
             "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml"),
             "--no-shrink"],
            env=env, capture_output=True, text=True, timeout=420, check=False,
        )
    finally:
        cluster.stop()
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    report = (tmp_path / "junit.xml").read_text()
    # It really exercised both operations, not an empty schema.
    assert "intake_trigger" in report or "/v1/intake/{intake_id}" in report
    assert "{work_id}" in report
