"""The callers' client installed the way callers install it: a fresh venv, `pip install
./clients/python`, no Django anywhere, and its `auxot run` against a live server and a
real qcluster."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.callers import caller, worker  # noqa: F401  (fixtures)
from tests.processes import ROOT

CLIENT = ROOT / "clients" / "python"
# requests and its own dependencies, plus what a fresh venv starts with.
ALLOWED = {"auxot-client", "requests", "urllib3", "idna", "charset-normalizer", "certifi",
           "pip", "setuptools"}
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client_bin(tmp_path_factory) -> Path:
    """The bin/ of a new venv holding only `pip install ./clients/python` (a copy of it, so
    pip's in-tree build leaves nothing behind in the repository)."""
    root = tmp_path_factory.mktemp("client")
    source = root / "python"
    shutil.copytree(CLIENT, source,
                    ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet",
                              str(source)], capture_output=True, text=True, timeout=600,
                             check=False)
    assert install.returncode == 0, install.stderr
    return venv / "bin"


def _python(client_bin: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([client_bin / "python", "-c", code], capture_output=True, text=True,
                          cwd=client_bin, timeout=60, check=False)


def test_fresh_client_venv_has_requests_and_no_django(client_bin):
    assert "No module named 'django'" in _python(client_bin, "import django").stderr
    assert "No module named 'auxot'" in _python(client_bin, "import auxot").stderr
    found = _python(client_bin, "import auxot_client; print(auxot_client.__version__)")
    assert found.returncode == 0 and found.stdout.strip() == "0.1.0"
    listed = subprocess.run([client_bin / "python", "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    names = {package["name"].lower() for package in json.loads(listed)}
    assert {"auxot-client", "requests"} <= names
    assert names <= ALLOWED, names - ALLOWED


def test_verify_callback_without_the_extra_says_how_to_get_it(client_bin):
    result = subprocess.run([client_bin / "auxot", "verify-callback", "--secret", "whsec_x"],
                            input=b"webhook-id: m\n\n{}", capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 3
    assert b"pip install 'auxot-client[callbacks]'" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_fresh_client_runs_an_intake_to_completion(caller, worker, client_bin):  # noqa: F811
    env = caller.env(PATH=f"{client_bin}:/usr/bin:/bin")
    result = subprocess.run([client_bin / "auxot", "run", caller.intake_id, "--data",
                             '{"customer": "Acme Corp", "n": 7}'], capture_output=True,
                            env=env, cwd=client_bin, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"greeting": "Hello, Acme Corp", "n": 7}
    assert b"completed" in result.stderr
    assert caller.token.encode() not in result.stdout + result.stderr
