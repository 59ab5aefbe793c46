"""require_tool: a missing program skips loudly, or fails under AUXOT_REQUIRE_ALL_TOOLS=1."""

import subprocess
import sys

import pytest

from tests.processes import ROOT
from tests.tools import REQUIRE_ALL_ENV, ToolMissing, require_tool

CONFTEST = "from tests.tools import pytest_runtest_makereport  # noqa: F401\n"
PROBE = '''
from tests.tools import require_tool

def test_needs_a_missing_tool():
    require_tool("auxot-no-such-tool")
'''


def _run_probe(tmp_path, flag: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if flag is not None:
        env[REQUIRE_ALL_ENV] = flag
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:django",
         "-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, timeout=120, check=False, env=env)


def test_present_tool_returns_its_path():
    assert require_tool("sh").endswith("/sh")


def test_missing_tool_skips_with_the_reason():
    with pytest.raises(ToolMissing, match="MISSING TOOL 'auxot-no-such-tool'"):
        require_tool("auxot-no-such-tool")


def test_missing_tool_is_a_skip_without_the_flag(tmp_path):
    result = _run_probe(tmp_path, flag=None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "MISSING TOOL 'auxot-no-such-tool'" in result.stdout


def test_missing_tool_fails_under_the_flag(tmp_path):
    result = _run_probe(tmp_path, flag="1")
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
    assert "a missing tool fails" in result.stdout
