"""The intake page's shell snippets run as pasted: the variables they name are expanded."""

import shutil
import subprocess

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
