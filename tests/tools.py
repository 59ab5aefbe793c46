"""External programs some tests need (shellcheck, jq, curl, chromium, node, npm).

`make test` installs missing ones when it runs as root with apt-get; elsewhere a test that
needs one skips with a loud reason. With AUXOT_REQUIRE_ALL_TOOLS=1 (CI sets it) such a skip
is a failure instead, so CI never passes by skipping. No Django here: this module is also
loaded on its own by the test of these rules.
"""

import os
import shutil

import pytest

REQUIRE_ALL_ENV = "AUXOT_REQUIRE_ALL_TOOLS"


class ToolMissing(pytest.skip.Exception):
    """A skip because a program is not installed (the only skip the flag turns into a fail)."""


def require_tool(name: str) -> str:
    """The program's path; skip the test (or fail it, under the flag) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(
            f"MISSING TOOL {name!r}: install it (apt-get install -y {name}; `make test` does "
            f"that as root). {REQUIRE_ALL_ENV}=1 turns this skip into a failure.",
            allow_module_level=True)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (report.skipped and call.excinfo is not None and call.excinfo.errisinstance(ToolMissing)
            and os.environ.get(REQUIRE_ALL_ENV) == "1"):
        report.outcome = "failed"
        report.longrepr = f"{call.excinfo.value.msg} ({REQUIRE_ALL_ENV}=1: a missing tool fails)"
    return report
