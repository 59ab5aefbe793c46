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


def test_every_command_and_its_options_are_in_the_readme():
    """Every command the apps add is named as `manage.py <name>` (or `make run`'s demo) and
    each option it takes appears in the README: `apikey_issue --user` and `demo --no-serve`
    were said nowhere."""
    import re
    from pathlib import Path

    from django.core.management import get_commands, load_command_class

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    ours = {name: app for name, app in get_commands().items()
            if app in ("auxot", "apikeys", "intakes", "workflows")}
    assert {"apikey_issue", "callbacks", "demo", "health", "retention_run"} <= set(ours)
    missing = []
    for name, app in sorted(ours.items()):
        if f"manage.py {name}" not in readme:
            missing.append(name)
        command = load_command_class(app, name)
        parser = command.create_parser("manage.py", name)
        base = {option for action in command.create_parser("manage.py", "check")._actions
                for option in action.option_strings}
        for action in parser._actions:
            for option in action.option_strings:
                if (option.startswith("--") and option not in base
                        and option not in {"--help", "--version"}
                        and not re.search(rf"{re.escape(option)}\b", readme)):
                    missing.append(f"{name} {option}")
    assert missing == []
