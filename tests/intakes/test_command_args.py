"""The operators' commands refuse bad arguments with a clear error before doing anything:
`callbacks --threads -1` ran a dispatcher with no sender, `--threads 0` silently meant 64,
`metrics_exporter --port 99999` and a bad `--bind` died with a traceback, and
`retention_run --budget-seconds nan` or `-5` ran."""

import pytest
from django.core.management import CommandError, call_command


@pytest.mark.parametrize(("command", "args", "says"), [
    ("callbacks", ["--threads", "-1"], "1 to 1024"),
    ("callbacks", ["--threads", "0"], "1 to 1024"),
    ("callbacks", ["--threads", "many"], "1 to 1024"),
    ("metrics_exporter", ["--port", "99999"], "port from 0 to 65535"),
    ("metrics_exporter", ["--port", "-1"], "port from 0 to 65535"),
    ("metrics_exporter", ["--port", "x"], "port from 0 to 65535"),
    ("retention_run", ["--budget-seconds", "nan"], "above 0"),
    ("retention_run", ["--budget-seconds", "-5"], "above 0"),
    ("retention_run", ["--budget-seconds", "inf"], "above 0"),
])
def test_a_bad_argument_is_refused_by_name(command, args, says):
    with pytest.raises(CommandError, match=says):
        call_command(command, *args)


def test_the_exporter_says_why_it_cannot_listen(settings):
    settings.AUXOT_METRICS_TOKEN = "0123456789abcdef0123"
    with pytest.raises(CommandError, match=r"cannot listen on 999\.1\.1\.1:"):
        call_command("metrics_exporter", "--bind", "999.1.1.1", "--port", "9")
