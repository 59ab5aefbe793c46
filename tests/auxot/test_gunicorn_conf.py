"""gunicorn.conf.py read from an environment: gunicorn's master never loads auxot.settings,
so its own reads must refuse what the settings would (and say which variable)."""

import runpy
from pathlib import Path

import pytest

CONF = str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py")


def _conf(monkeypatch, **env: str) -> dict:
    for name in ("GUNICORN_WORKERS", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_ACCESSLOG",
                 "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(CONF)


@pytest.mark.parametrize("name", ["GUNICORN_WORKERS", "WEB_CONCURRENCY", "GUNICORN_THREADS"])
def test_zero_processes_or_threads_stop_start_up_naming_the_variable(monkeypatch, name):
    # GUNICORN_WORKERS=0 started an arbiter that listened and answered nobody.
    with pytest.raises(ValueError, match=f"^{name}=0 is below the minimum of 1"):
        _conf(monkeypatch, **{name: "0"})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_access_log_unless_asked_and_its_line_has_no_query_string(monkeypatch, log_format):
    """With LOG_FORMAT=json, gunicorn's logconfig_dict turned its access log on (to stderr,
    `?token=...` included) although GUNICORN_ACCESSLOG was unset."""
    conf = _conf(monkeypatch, LOG_FORMAT=log_format)
    assert conf["accesslog"] is None
    access = conf["logconfig_dict"]["loggers"]["gunicorn.access"]
    assert access["handlers"] == [] and access["propagate"] is False
    assert "%(r)s" not in conf["access_log_format"] and "%(q)s" not in conf["access_log_format"]
    conf = _conf(monkeypatch, LOG_FORMAT="json", GUNICORN_ACCESSLOG="-")
    [handler] = conf["logconfig_dict"]["loggers"]["gunicorn.access"]["handlers"]
    assert conf["logconfig_dict"]["handlers"][handler]["stream"] == "ext://sys.stdout"


def test_the_shipped_web_unit_sits_behind_the_readmes_nginx_which_gunicorn_trusts(monkeypatch):
    """The README once said to set GUNICORN_FORWARDED_ALLOW_IPS to the load balancer's
    address; with the shipped unit the proxy gunicorn sees is nginx on the same host, and
    that setting made every https request look like http (AUXOT_SSL_REDIRECT: a loop)."""
    import configparser
    import re

    root = Path(CONF).parent
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(root / "deploy" / "systemd" / "auxot-web.service")
    [bind] = [line.split("=", 1)[1] for line in unit["Service"]["Environment"].split()
              if line.startswith("GUNICORN_BIND=")]
    readme = (root / "README.md").read_text()
    assert re.search(r"upstream auxot \{ server (\S+);", readme).group(1) == bind
    assert f"listens on `{bind}`" in readme
    monkeypatch.delenv("GUNICORN_FORWARDED_ALLOW_IPS", raising=False)
    trusted = runpy.run_path(CONF)["forwarded_allow_ips"].split(",")
    assert bind.rsplit(":", 1)[0] in trusted


def test_the_arbiter_imports_the_metrics_module_before_any_worker_exits(tmp_path):
    """child_exit (gunicorn's SIGCHLD handler) imported prometheus_client on the first
    worker exit; a HUP stops every worker at once, the next SIGCHLD re-entered the half-done
    import, and the arbiter died of an ImportError (`systemctl reload auxot-web`, 4 workers:
    3 runs in 6). Reading the config imports it; the handler imports nothing."""
    import ast
    import subprocess
    import sys

    code = ("import runpy, sys; conf = runpy.run_path(sys.argv[1]); "
            "print('prometheus_client.multiprocess' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, CONF], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    [handler] = [node for node in ast.walk(ast.parse(Path(CONF).read_text()))
                 if isinstance(node, ast.FunctionDef) and node.name == "child_exit"]
    assert not [node for node in ast.walk(handler)
                if isinstance(node, ast.Import | ast.ImportFrom)]
