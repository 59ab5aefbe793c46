"""The import contracts in pyproject.toml hold, fail the suite when broken, and can fail."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract for contract in CONFIG["contracts"]}
# A contract known to be broken, with the reason (strict xfail: the suite fails once it is
# kept again, so the entry cannot outlive the problem). None today.
KNOWN_BROKEN: dict[str, str] = {}


def _lint_imports(*args: str) -> str:
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def report() -> str:
    return _lint_imports()


@pytest.mark.parametrize("contract_id", [
    pytest.param(cid, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[cid], strict=True))
    if cid in KNOWN_BROKEN else cid
    for cid in CONTRACTS])
def test_import_contract_is_kept(report, contract_id):
    name = CONTRACTS[contract_id]["name"]
    assert f"{name} KEPT" in report, report


def test_layers_name_every_app_of_this_repository_and_nothing_else():
    ours = {app.name for app in apps.get_app_configs() if Path(app.path).parent == ROOT}
    layered = {name.strip() for layer in CONTRACTS["layers"]["layers"]
               for name in layer.split("|")}
    assert layered == ours
    assert ours <= set(CONFIG["root_packages"])


def test_a_core_module_importing_an_app_breaks_the_layers(tmp_path):
    # The real layers minus the composition-root exemption: auxot/urls.py imports intakes.
    config = tmp_path / "pyproject.toml"
    config.write_text(f"""[tool.importlinter]
root_packages = {CONFIG["root_packages"]!r}
include_external_packages = true

[[tool.importlinter.contracts]]
name = "Layers without the exemption"
type = "layers"
layers = {CONTRACTS["layers"]["layers"]!r}
""")
    report = _lint_imports(str(config))
    assert "Layers without the exemption BROKEN" in report, report
    assert "auxot.urls -> intakes." in report
