"""deploy/systemd: every unit runs from the same environment file, and its stop timeout sits
above the grace period of the command it runs (README, Deployment: "Their stop timeouts sit a
few seconds above the graceful periods"), or systemd SIGKILLs work the process was finishing."""

import configparser
import runpy
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def _grace(command: list[str]) -> float:
    if command[0].endswith("/gunicorn"):
        return runpy.run_path(str(ROOT / "gunicorn.conf.py"))["graceful_timeout"]
    subcommand = command[command.index("manage.py") + 1]
    return {"qcluster": settings.AUXOT_WORKER_GRACE_SECONDS,
            "callbacks": settings.AUXOT_CALLBACK_GRACE_SECONDS,
            "metrics_exporter": 0}[subcommand]  # serves scrapes; nothing to finish


def test_every_unit_stops_after_its_commands_grace_from_the_shared_environment():
    assert {unit.name for unit in UNITS} >= {"auxot-web.service", "auxot-worker.service",
                                             "auxot-callbacks.service",
                                             "auxot-metrics.service"}
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(unit)
        service = parser["Service"]
        assert service["EnvironmentFile"] == "/etc/auxot/auxot.env", unit.name
        grace = _grace(service["ExecStart"].split())
        assert grace < int(service["TimeoutStopSec"]) <= grace + 15, unit.name
