"""The intake page's shell snippets run as pasted: the variables they name are expanded."""

import json
import shutil
import subprocess
import sys

import pytest

from intakes.snippets import intake_snippets

BASE, INTAKE = "https://auxot.example.com", "0b0e7c3a-5f0f-4a4e-9d57-8f2a4f0d5e11"
# A stand-in for curl: prints each argument on a line of its own, then the answer a trigger
# or a poll would give, so the loop snippet finishes.
FAKE_CURL = ('curl() { printf "ARG %s\\n" "$@" >&2; '
             'printf \'{"work_id": "w-123", "status": "completed"}\'; }; ')


def _run(text: str) -> list[str]:
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run the shell snippets")
    done = subprocess.run(["bash", "-c", FAKE_CURL + "AUXOT_API_KEY=k-456; WORK_ID=w-123\n" + text],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return [line[4:] for line in done.stderr.splitlines() if line.startswith("ARG ")]


SHELL = {"curl-trigger", "curl-poll", "shell-loop"}


def test_every_shell_snippet_is_checked():
    slugs = {slug for slug, _title, _text in intake_snippets(base_url=BASE, intake_id=INTAKE)}
    assert slugs >= SHELL
    assert slugs - SHELL == {"github-actions", "python"}  # not run by bash as they are


@pytest.mark.parametrize("slug", sorted(SHELL))
def test_a_shell_snippet_sends_the_key_and_the_work_id_it_names(slug):
    [text] = [t for s, _title, t in intake_snippets(base_url=BASE, intake_id=INTAKE)
              if s == slug]
    args = _run(text)
    assert "Authorization: Bearer k-456" in args, args
    assert "$AUXOT_API_KEY" not in " ".join(args) and "$WORK_ID" not in " ".join(args)
    urls = [a for a in args if a.startswith(BASE)]
    assert urls, args
    if slug != "curl-trigger":
        assert f"{BASE}/v1/intake/{INTAKE}/work/w-123" in urls, urls
    else:
        assert urls == [f"{BASE}/v1/intake/{INTAKE}"]


# --- A refused request stops the loops (a wrong key, a deactivated intake: 401, 404) ------
PROBLEM_401 = '{"type": "/v1/problems/unauthorized", "status": 401, "code": "unauthorized"}'
PROBLEM_404 = '{"type": "/v1/problems/not_found", "status": 404, "code": "not_found"}'
PROBLEM_503 = '{"type": "/v1/problems/database_unavailable", "status": 503}'
ACCEPTED = '{"work_id": "w-123", "status": "pending"}'
RUNNING = '{"work_id": "w-123", "status": "running"}'
COMPLETED = '{"work_id": "w-123", "status": "completed"}'


def _snippet(slug: str) -> str:
    [text] = [t for s, _title, t in intake_snippets(base_url=BASE, intake_id=INTAKE)
              if s == slug]
    return text


def _run_loop(answers: list[str], tmp_path) -> subprocess.CompletedProcess:
    """The shell loop with a curl that gives `answers` in turn (the last one for ever after;
    a file counts the calls, as curl runs in subshells) and a sleep that does not wait; each
    call to curl is also said on stderr."""
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run the shell snippets")
    counter = tmp_path / "calls"
    counter.write_text("0")
    script = ("ANSWERS=(" + " ".join(f"'{a}'" for a in answers) + ")\n"
              f"curl() {{ local n; n=$(cat '{counter}'); echo CALL >&2; "
              'printf %s "${ANSWERS[$n]}"; '
              f"[ $n -lt $((${{#ANSWERS[@]}} - 1)) ] && echo $((n + 1)) > '{counter}'; "
              "return 0; }\n"
              "sleep() { :; }\nAUXOT_API_KEY=k-456\n" + _snippet("shell-loop"))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20,
                          check=False)


def test_the_shell_loop_stops_on_a_refused_trigger_and_prints_the_problem(tmp_path):
    done = _run_loop([PROBLEM_401], tmp_path)
    assert done.stderr.count("CALL") == 1, done.stderr  # no poll of ".../work/" after it
    assert '"unauthorized"' in done.stderr
    assert done.returncode != 0


def test_the_shell_loop_stops_when_a_poll_is_refused(tmp_path):
    done = _run_loop([ACCEPTED, RUNNING, PROBLEM_404], tmp_path)  # deactivated while it polls
    assert done.stderr.count("CALL") == 3, done.stderr
    assert '"not_found"' in done.stderr


def test_the_shell_loop_waits_out_a_503_and_prints_the_finished_item(tmp_path):
    done = _run_loop([ACCEPTED, PROBLEM_503, RUNNING, COMPLETED], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("CALL") == 4
    assert done.stdout.strip() == COMPLETED


FAKE_REQUESTS = '''
import json, os, time
time.sleep = lambda seconds: None  # the snippet's jitter, not waited here
_answers = json.loads(os.environ["FAKE_ANSWERS"])

class _Answer:
    def __init__(self, status, body):
        self.status_code, self.text = status, body
    def json(self):
        return json.loads(self.text)
    def raise_for_status(self):
        if self.status_code >= 400:
            raise HTTPError(f"{self.status_code} Client Error")

class HTTPError(Exception):
    pass

def _next(*args, **kwargs):
    print("CALL", flush=True)
    status, body = _answers.pop(0) if len(_answers) > 1 else _answers[0]
    return _Answer(status, body)

post = get = _next
'''


def _run_python(answers: list[tuple[int, str]], tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "requests.py").write_text(FAKE_REQUESTS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "AUXOT_API_KEY": "k-456",
           "FAKE_ANSWERS": json.dumps(answers)}
    return subprocess.run([sys.executable, "-c", _snippet("python")], capture_output=True,
                          text=True, timeout=20, check=False, env=env)


def test_the_python_snippet_stops_on_a_refused_trigger_with_the_problem(tmp_path):
    done = _run_python([(401, PROBLEM_401)], tmp_path)
    assert done.returncode != 0
    assert done.stdout.count("CALL") == 1
    assert "401" in done.stderr and '"unauthorized"' in done.stderr


def test_the_python_snippet_stops_when_a_poll_is_refused(tmp_path):
    done = _run_python([(202, ACCEPTED), (200, RUNNING), (404, PROBLEM_404)], tmp_path)
    assert done.returncode != 0
    assert done.stdout.count("CALL") == 3
    assert "404" in done.stderr and '"not_found"' in done.stderr


def test_the_python_snippet_waits_out_a_503_and_prints_the_finished_item(tmp_path):
    done = _run_python([(202, ACCEPTED), (503, PROBLEM_503), (200, COMPLETED)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("CALL") == 3
    assert "'status': 'completed'" in done.stdout


def test_the_poll_snippet_without_a_work_id_says_what_to_set_and_sends_nothing():
    """Pasted after the trigger snippet (which sets no WORK_ID) it polled ".../work/": a 404
    that blames the intake id or the key."""
    done = subprocess.run(["bash", "-c", FAKE_CURL + "AUXOT_API_KEY=k-456; unset WORK_ID\n"
                           + _snippet("curl-poll")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "ARG" not in done.stderr  # curl was not run
    assert "set WORK_ID to the work_id of the 202 answer" in done.stderr
