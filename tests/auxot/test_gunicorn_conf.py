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
    if log_format == "json":
        access = conf["logconfig_dict"]["loggers"]["gunicorn.access"]
        assert access["handlers"] == [] and access["propagate"] is False
    assert "%(r)s" not in conf["access_log_format"] and "%(q)s" not in conf["access_log_format"]
    conf = _conf(monkeypatch, LOG_FORMAT="json", GUNICORN_ACCESSLOG="-")
    [handler] = conf["logconfig_dict"]["loggers"]["gunicorn.access"]["handlers"]
    assert conf["logconfig_dict"]["handlers"][handler]["stream"] == "ext://sys.stdout"
