"""`make run` needs no network: the http example posts to the demo's own echo endpoint,
which exists under DEBUG only, and every printed example completes with loopback only."""

import importlib
import io
import re
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import requests
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import clear_url_caches

import auxot.urls
from intakes.demo.seed import DEMO_ENV, demo_seed
from tests.processes import ROOT, Gunicorn, QCluster, process_env, wait_for
from workflows.models import Step

LOOPBACK_ONLY = ROOT / "tests" / "loopback_only"
DEMO_VARIABLES = ("AUXOT_DEMO_AGENT_BASE_URL", "AUXOT_DEMO_AGENT_MODEL", "AUXOT_DEMO_HTTP_URL")


@pytest.fixture
def demo_env(monkeypatch, tmp_path):
    monkeypatch.setattr("intakes.demo.seed.SECRETS_FILE", tmp_path / "demo-secrets.json")
    for name in DEMO_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@contextmanager
def _urlconf(*, debug: bool):
    try:
        with override_settings(DEBUG=debug):
            clear_url_caches()
            yield importlib.reload(auxot.urls)
    finally:
        importlib.reload(auxot.urls)
        clear_url_caches()


def _echo_urls(module) -> list:
    return [p for p in module.urlpatterns if getattr(p, "name", None) == "demo-echo"]


def test_echo_is_never_mounted_without_debug():
    with _urlconf(debug=False) as urls:
        assert _echo_urls(urls) == []
        assert Client().post("/demo/echo", {}, content_type="application/json").status_code == 404


def test_echo_under_debug_answers_what_it_got_but_no_credentials():
    with _urlconf(debug=True) as urls:
        assert len(_echo_urls(urls)) == 1
        response = Client(enforce_csrf_checks=True).post(
            "/demo/echo?a=1", {"customer": "Acme"}, content_type="application/json",
            HTTP_X_TICKET="SUP-2", HTTP_AUTHORIZATION="Bearer secret", HTTP_COOKIE="s=1")
    assert response.status_code == 200
    body = response.json()
    assert (body["method"], body["args"], body["json"]) == ("POST", {"a": "1"},
                                                            {"customer": "Acme"})
    assert body["headers"]["X-Ticket"] == "SUP-2"
    assert not {"Authorization", "Cookie"} & set(body["headers"])


def _http_step_url() -> str:
    return Step.objects.get(workflow__slug="example-http", kind="http").config["url"]


def test_demo_http_example_posts_to_its_own_echo_unless_told(db, demo_env):
    demo = demo_seed(base_url="http://127.0.0.1:8123")
    assert demo.http_url == _http_step_url() == "http://127.0.0.1:8123/demo/echo"
    demo_seed(base_url="http://127.0.0.1:9000")  # another port: the step follows
    assert _http_step_url() == "http://127.0.0.1:9000/demo/echo"
    demo_env.setenv("AUXOT_DEMO_HTTP_URL", "https://echo.example.org/post")
    assert demo_seed().http_url == _http_step_url() == "https://echo.example.org/post"


def test_demo_command_says_where_the_http_example_posts(db, demo_env):
    out = io.StringIO()
    call_command("demo", "--no-serve", "--port", "8765", stdout=out)
    assert ("the http example posts to http://127.0.0.1:8765/demo/echo, this demo's own echo "
            "endpoint: nothing leaves this machine") in out.getvalue()


def test_demo_commands_export_line_sets_all_three_the_quick_start_names(db, demo_env):
    import subprocess

    out = io.StringIO()
    call_command("demo", "--no-serve", "--port", "8765", stdout=out)
    printed = out.getvalue()
    [export] = [line.strip() for line in printed.splitlines()
                if line.strip().startswith("export AUXOT_")]
    shown = subprocess.run(["bash", "-c", export + '\necho "$AUXOT_BASE_URL $AUXOT_INTAKE_ID'
                                                   ' $AUXOT_API_KEY"'],
                           capture_output=True, text=True, check=True).stdout.split()
    intake = re.search(r"Intake id:\s+(\S+)", printed).group(1)
    token = re.search(r"API key:\s+(\S+)", printed).group(1)
    assert shown == ["http://127.0.0.1:8765", intake, token]


# --- end to end: the printed examples, a real web process and qcluster, loopback only ------
def _printed_triggers(text: str) -> list[tuple[str, str]]:
    """(url, body) of every `curl -X POST` the demo prints, multi-line ones included."""
    pattern = r"curl (?:-i )?-X POST \"?(http://[^\"\s]+)\"?[^\n]*(?:\\\n[^\n]*)*?-d '([^']*)'"
    return re.findall(pattern, text)


def _run(url: str, body: str, headers: dict) -> dict:
    poll = requests.post(url, data=body, headers=headers, timeout=10)
    assert poll.status_code == 202, poll.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        item = requests.get(poll.headers["Location"], params={"wait": 5}, headers=headers,
                            timeout=15).json()
        if item["status"] in ("completed", "failed"):
            return item
        if (item["waiting_on"] or {}).get("kind") == "approval":
            decided = requests.post(f"{poll.headers['Location']}/approval", headers=headers,
                                    json={"decision": "approve", "comment": "demo"}, timeout=10)
            assert decided.status_code == 200, decided.text
    raise AssertionError(f"{url} did not finish: {item}")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_every_printed_demo_example_completes_with_loopback_only(demo_env, tmp_path):
    refused = tmp_path / "refused.log"
    env = {**DEMO_ENV, "DEBUG": "1", "PYTHONPATH": str(LOOPBACK_ONLY),
           "LOOPBACK_ONLY_LOG": str(refused)}
    guard = subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo("
                            "'example.com', 443)"], env=process_env(**env), cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert "loopback only" in guard.stderr  # the web and worker below run under this guard
    refused.unlink()
    web = Gunicorn(**env)
    out = io.StringIO()
    call_command("demo", "--no-serve", "--port", str(web.port), stdout=out)
    printed = out.getvalue()
    token = re.search(r"API key:\s+(\S+)", printed).group(1)
    triggers = _printed_triggers(printed)
    assert len(triggers) == 5  # the demo intake + transform, delay, http, approval examples
    assert "agent     inactive" in printed
    web.start()
    worker = QCluster(**env).start()
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        results = {url: _run(url, body, headers) for url, body in triggers}
    finally:
        worker.stop()
        web.stop()
    assert {url: item["status"] for url, item in results.items()} == dict.fromkeys(
        results, "completed"), results
    http = next(item for item in results.values() if item["steps"][0]["kind"] == "http")
    assert http["output"]["json"]["json"] == {"customer": "Acme"}
    assert not refused.exists(), refused.read_text()
    wait_for(lambda: worker.proc.poll() is not None, timeout=5, what="the worker to stop")
