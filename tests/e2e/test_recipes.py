"""examples/: the cron shell script, the Python recipe and the GitHub Actions workflow run
against a live server and a real qcluster (the Actions file by executing its run: scripts
with the environment GitHub would give them)."""

import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.callers import BIN, caller, worker  # noqa: F401  (fixtures)
from tests.processes import ROOT, free_port
from tests.tools import require_tool

EXAMPLES = ROOT / "examples"
CRON = EXAMPLES / "cron" / "nightly-reconcile.sh"
PYTHON = EXAMPLES / "python" / "trigger_and_wait.py"
ACTIONS = EXAMPLES / "github-actions" / "trigger-auxot.yml"


def test_cron_script_is_shellcheck_clean():
    result = subprocess.run([require_tool("shellcheck"), "--severity=style", str(CRON)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert os.access(CRON, os.X_OK)


@pytest.fixture
def shell_tools():
    """The cron script and the Actions steps run curl and jq."""
    require_tool("curl")
    require_tool("jq")


# --- cron -----------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_cron_script_completes(caller, worker, shell_tools):  # noqa: F811
    result = caller.run(["bash", str(CRON)])
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["greeting"] == "Hello, world"
    assert b"status completed" in result.stderr
    assert caller.token.encode() not in result.stderr


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_cron_script_exit_codes(caller, worker, shell_tools):  # noqa: F811
    failed = caller.run(["bash", str(CRON)], AUXOT_INTAKE_ID=caller.failing_intake_id)
    assert failed.returncode == 1, failed.stderr.decode()
    assert b"bad_expression" in failed.stderr
    slow = caller.run(["bash", str(CRON)], AUXOT_INTAKE_ID=caller.slow_intake_id,
                      AUXOT_TIMEOUT_SECONDS="2")
    assert slow.returncode == 2, slow.stderr.decode()
    assert b"timed out" in slow.stderr
    unknown = caller.run(["bash", str(CRON)],
                         AUXOT_INTAKE_ID="00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 3 and b"not_found" in unknown.stderr
    bad_key = caller.run(["bash", str(CRON)], AUXOT_API_KEY="team.nope")
    assert bad_key.returncode == 3 and b"unauthorized" in bad_key.stderr
    assert b"team.nope" not in bad_key.stderr
    missing = caller.run(["bash", str(CRON)], AUXOT_INTAKE_ID="")
    assert missing.returncode != 0 and b"AUXOT_INTAKE_ID" in missing.stderr


class _FlakyAuxot(BaseHTTPRequestHandler):
    """The first trigger's connection drops (was it accepted?); then the item completes."""

    posts: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append(self.headers.get("Idempotency-Key"))
        if len(self.posts) == 1:
            self.close_connection = True  # no answer: curl reports 000
            return
        self._json(202, {"work_id": "w1", "status": "pending", "status_url": "u"})

    def do_GET(self):
        self._json(200, {"work_id": "w1", "status": "completed", "output": {"ok": True},
                         "diagnosis": "Completed."})

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_cron_script_retries_its_trigger_under_one_idempotency_key(shell_tools):
    """A POST whose answer was lost may have been accepted: the retry must carry the same
    Idempotency-Key, or the nightly job runs twice."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyAuxot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FlakyAuxot.posts = []
    try:
        env = {"PATH": os.environ["PATH"], "AUXOT_INTAKE_ID": "i",
               "AUXOT_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
               "AUXOT_API_KEY": "user.abcdefghijkl." + "A" * 43 + "0a1b2c"}
        result = subprocess.run(["bash", str(CRON)], env=env, capture_output=True,
                                timeout=60, check=False)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr.decode()
    assert len(_FlakyAuxot.posts) == 2 and _FlakyAuxot.posts[0]
    assert _FlakyAuxot.posts[0] == _FlakyAuxot.posts[1]


def test_cron_script_keeps_the_key_out_of_the_process_list():
    text = CRON.read_text()
    assert "Bearer $AUXOT_API_KEY" not in text.replace("'Authorization: Bearer %s", "")
    assert "-H @<(printf 'Authorization: Bearer %s\\n' \"$AUXOT_API_KEY\")" in text


# --- every caller we ship: AUXOT_BASE_URL is the server's root --------------------------
@pytest.mark.parametrize(("path", "prefix"), [("/v1", ""), ("/v1/", ""), ("/v1/docs", ""),
                                              ("/v1/intake/0b0e7c3a-5f0f-4a4e", ""),
                                              ("/auxot/v1/docs", "/auxot")])
@pytest.mark.parametrize("tool", ["auxot", "cron"])
def test_a_base_url_with_the_api_path_is_refused_naming_the_root(tool, path, prefix,
                                                                 shell_tools):
    """Each caller adds /v1/… itself: with /v1 in AUXOT_BASE_URL too (pasted from /v1/docs or
    an intake's URL) every request met a 404 that blamed the intake id and the key. Nothing
    is sent (nothing listens there: a request would be exit 4), and the message names the
    URL to set instead."""
    root = f"http://127.0.0.1:{free_port()}"
    env = {"PATH": os.environ["PATH"], "AUXOT_BASE_URL": root + path, "AUXOT_INTAKE_ID": "i",
           "AUXOT_API_KEY": "user.abcdefghijkl." + "A" * 43 + "0a1b2c"}
    argv = [str(BIN / "auxot"), "trigger", "i"] if tool == "auxot" else ["bash", str(CRON)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 3, result.stderr
    assert "without /v1" in result.stderr, result.stderr
    assert re.search(rf"e\.g\. {re.escape(root + prefix)}(?![/\w])", result.stderr), result.stderr


# --- python ---------------------------------------------------------------------------------
def test_python_recipe_is_about_fifteen_lines():
    code = [line for line in PYTHON.read_text().split('"""')[-1].splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 18


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_python_recipe_completes_and_fails(caller, worker):  # noqa: F811
    import sys

    done = caller.run([sys.executable, str(PYTHON)])
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == {"greeting": "Hello, Acme Corp", "n": None}
    failed = caller.run([sys.executable, str(PYTHON)], AUXOT_INTAKE_ID=caller.failing_intake_id)
    assert failed.returncode == 1 and b"failed: " in failed.stderr
    # Not the work failing: exit like the CLI (3), with the reason and no traceback.
    wrong_key = caller.token[:-6] + ("000000" if caller.token[-6:] != "000000" else "111111")
    refused = caller.run([sys.executable, str(PYTHON)], AUXOT_API_KEY=wrong_key)
    assert refused.returncode == 3, refused.stderr.decode()
    assert b"HTTP 401" in refused.stderr and b"Traceback" not in refused.stderr
    unset = caller.run([sys.executable, str(PYTHON)], AUXOT_API_KEY="")
    assert unset.returncode == 3 and b"AUXOT_API_KEY" in unset.stderr


# --- GitHub Actions -------------------------------------------------------------------------
def _workflow() -> dict:
    return yaml.safe_load(ACTIONS.read_text())


def _steps() -> list[dict]:
    return _workflow()["jobs"]["auxot"]["steps"]


def test_actions_file_parses_and_uses_the_repository_secret():
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as true
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    assert workflow["permissions"] == {"contents": "read"}
    env = _steps()[2]["env"]
    assert env["AUXOT_API_KEY"] == "${{ secrets.AUXOT_API_KEY }}"
    for step in _steps():
        # Untrusted event data (a PR title) must never be pasted into a script.
        assert "${{" not in step.get("run", ""), step.get("name")


_EXPR = re.compile(r"^\$\{\{\s*([\w.]+)(?:\s*\|\|\s*'([^']*)')?\s*\}\}$")


def _resolve(value: str, context: dict) -> str:
    """Evaluate the `${{ a.b.c }}` / `${{ a.b || 'x' }}` expressions this file uses."""
    match = _EXPR.match(value)
    if not match:
        return value
    found = context
    for part in match.group(1).split("."):
        found = found.get(part) if isinstance(found, dict) else None
    return str(found) if found not in (None, "") else (match.group(2) or "")


def _run_step(step: dict, context: dict, github_env: dict, path: str, cwd: Path):
    env = {**github_env, "PATH": path, "HOME": str(cwd)}
    env.update({k: _resolve(str(v), context) for k, v in step.get("env", {}).items()})
    # GitHub runs `run:` with bash --noprofile --norc -eo pipefail {0}.
    script = cwd / "step.sh"
    script.write_text(step["run"])
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                          env=env, cwd=cwd, capture_output=True, timeout=120, check=False)


def _github(caller, tmp_path, *, intake_id: str, pull_request: dict | None):  # noqa: F811
    context = {"secrets": {"AUXOT_API_KEY": caller.token},
               "vars": {"AUXOT_BASE_URL": caller.base_url, "AUXOT_INTAKE_ID": intake_id,
                        "AUXOT_PIP_SPEC": "auxot-client==0.1.0"},
               "github": {"event": {"pull_request": pull_request} if pull_request else {}}}
    (tmp_path / "out").touch()
    (tmp_path / "summary").touch()
    github_env = {"GITHUB_REPOSITORY": "acme/shop", "GITHUB_SHA": "0123abc", "CI": "true",
                  "GITHUB_REF": "refs/pull/7/merge", "GITHUB_ACTOR": "octocat",
                  "GITHUB_SERVER_URL": "https://github.com", "GITHUB_RUN_ID": "99",
                  "GITHUB_RUN_ATTEMPT": "1", "GITHUB_OUTPUT": str(tmp_path / "out"),
                  "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")}
    return context, github_env


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_actions_steps_trigger_wait_and_pass(
        caller, worker, tmp_path, shell_tools):  # noqa: F811
    from workflows.models import WorkItem

    pr = {"number": 7, "title": "Fix checkout; rm -rf / $(whoami)", "html_url": "https://x/7"}
    context, github_env = _github(caller, tmp_path, intake_id=caller.intake_id,
                                  pull_request=pr)
    install, run = _steps()[1], _steps()[2]
    # The install step, with a stand-in `python` that records what pip would install.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python").write_text('#!/bin/sh\necho "$@" > "$HOME/pip-args"\n')
    (shim / "python").chmod(0o755)
    result = _run_step(install, context, github_env, f"{shim}:/usr/bin:/bin", tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "pip-args").read_text().split() == ["-m", "pip", "install", "--quiet",
                                                           "auxot-client==0.1.0"]
    context["vars"]["AUXOT_PIP_SPEC"] = ""
    unset = _run_step(install, context, github_env, f"{shim}:/usr/bin:/bin", tmp_path)
    assert unset.returncode != 0 and b"AUXOT_PIP_SPEC" in unset.stderr
    # The trigger-and-wait step, with the auxot CLI on PATH as pip would leave it.
    env_path = caller.env()["PATH"]
    result = _run_step(run, context, github_env, env_path, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    item = WorkItem.objects.get()
    assert item.status == "completed"
    assert item.input["pull_request"] == {"number": 7, "title": pr["title"], "url": "https://x/7"}
    assert item.input["sha"] == "0123abc" and item.input["repository"] == "acme/shop"
    assert item.correlation_id == "acme/shop#99"
    assert (tmp_path / "out").read_text() == f"work_id={item.pk}\n"
    assert "**completed**" in (tmp_path / "summary").read_text()
    assert caller.token.encode() not in result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_actions_step_fails_the_job_when_the_work_fails(
        caller, worker, tmp_path, shell_tools):  # noqa: F811
    context, github_env = _github(caller, tmp_path, intake_id=caller.failing_intake_id,
                                  pull_request=None)
    result = _run_step(_steps()[2], context, github_env, caller.env()["PATH"], tmp_path)
    assert result.returncode == 1
    assert "**failed**" in (tmp_path / "summary").read_text()
    assert json.loads((tmp_path / "auxot-input.json").read_text())["pull_request"] is None


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("refused", ["unknown-intake", "mistyped-key"])
def test_actions_step_without_a_work_item_summarises_why(
        caller, tmp_path, shell_tools, refused):  # noqa: F811
    """Exit 3 (or 4) has no work item: the job's summary says what refused the request,
    instead of "Auxot work `null`: **null**", and no `work_id=null` reaches later steps."""
    intake_id = ("0b0e7c3a-5f0f-4a4e-9d57-8f2a4f0d5e11" if refused == "unknown-intake"
                 else caller.intake_id)
    context, github_env = _github(caller, tmp_path, intake_id=intake_id, pull_request=None)
    if refused == "mistyped-key":
        context["secrets"]["AUXOT_API_KEY"] = caller.token[:-7] + (
            "x" if caller.token[-7] != "x" else "y") + caller.token[-6:]
    result = _run_step(_steps()[2], context, github_env, caller.env()["PATH"], tmp_path)
    assert result.returncode == 3, result.stderr.decode()
    assert (tmp_path / "out").read_text() == ""
    summary = (tmp_path / "summary").read_text()
    assert "null" not in summary and "exit 3" in summary, summary
    detail = json.loads((tmp_path / "auxot-result.json").read_text())["error"]["detail"]
    assert detail and detail in summary
