"""Operator defaults a step inherits, above the cap run time cuts them to, warn at startup.

`AUXOT_HTTP_TIMEOUT_SECONDS=120` with the step timeout at its default 60 s cut every http
step that names no timeout at 60 s, and nothing said so. The defaults are found in the
source (a step's own field `or settings.X`, a kind's `config.get(name, settings.X)`), so a
new one fails test_every_inherited_default_is_checked until workflows/checks.py lists it.
"""

import re
from pathlib import Path

import pytest
from django.core.checks import run_checks

from workflows.checks import INHERITED_DEFAULTS, inherited_defaults_check

ROOT = Path(__file__).resolve().parents[2]
INHERITS = re.compile(r"(?:\bself\.\w+ or |config\.get\(\s*\"\w+\",\s*)settings\.(AUXOT_\w+)")


def _inherited_in_source() -> set[str]:
    found = set()
    for path in [ROOT / "workflows" / "models.py", *(ROOT / "workflows" / "kinds").glob("*.py")]:
        found |= set(INHERITS.findall(path.read_text()))
    return found


def test_every_inherited_default_is_checked():
    found = _inherited_in_source()
    assert "AUXOT_HTTP_TIMEOUT_SECONDS" in found  # the pattern still finds the first one
    assert found == set(INHERITED_DEFAULTS)


def test_the_defaults_as_shipped_warn_nothing():
    assert inherited_defaults_check() == []


# Each default set above its cap (with the others as shipped).
ABOVE = {
    "AUXOT_HTTP_TIMEOUT_SECONDS": ({"AUXOT_HTTP_TIMEOUT_SECONDS": 120.0}, "60"),
    "AUXOT_STEP_TIMEOUT_SECONDS": ({"AUXOT_STEP_TIMEOUT_SECONDS": 285}, "280"),
    "AUXOT_STEP_MAX_ATTEMPTS": ({"AUXOT_STEP_MAX_ATTEMPTS": 25}, "20"),
}


def test_every_checked_default_is_driven_here():
    assert set(ABOVE) == set(INHERITED_DEFAULTS)


@pytest.mark.parametrize("name", sorted(INHERITED_DEFAULTS))
def test_a_default_above_its_cap_warns_naming_setting_and_cap(name, settings):
    overrides, cap = ABOVE[name]
    settings.AUXOT_TASK_TIMEOUT_SECONDS = 300
    settings.AUXOT_LEASE_GRACE_SECONDS = 10
    settings.AUXOT_STEP_TIMEOUT_SECONDS = 60
    for setting, value in overrides.items():
        setattr(settings, setting, value)
    warnings = [w for w in run_checks() if w.id.startswith("workflows.W")]
    assert [w.id for w in warnings] == [INHERITED_DEFAULTS[name].id]
    assert name in warnings[0].msg and f": {cap}." in warnings[0].msg, warnings[0].msg
    setattr(settings, name, float(cap))  # at the cap: nothing cut, nothing said
    assert inherited_defaults_check() == []
