"""Start-up validation of the environment: a present but malformed value stops the process
with a message that names the variable (and never echoes a value that may hold a password).
Each case runs `auxot.settings` in a fresh process, from that environment alone."""

import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from auxot.settings import env_float
from tests.processes import settings_printed

SETTINGS_SOURCE = (Path(__file__).resolve().parents[2] / "auxot" / "settings.py").read_text()
FLOAT_SETTINGS = re.findall(r'env_float\(\s*"([A-Z_]+)"', SETTINGS_SOURCE)


def test_every_number_setting_is_read_by_a_checked_helper():
    assert len(FLOAT_SETTINGS) >= 15
    # A bare float()/int() of an environment value would skip the checks (the retry
    # schedule, a list, checks its own values below).
    bare = re.findall(r"(?:float|int)\(os\.environ[^)]*\)", SETTINGS_SOURCE)
    assert bare == []


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_no_float_setting_takes_a_value_that_is_not_finite(monkeypatch, name, value):
    # `nan < minimum` is False, so nan passed every bound: AUXOT_TICK_SECONDS=nan spun a
    # core and never swept, AUXOT_BODY_READ_TIMEOUT_SECONDS=nan turned the 408 off.
    monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match=f"^{name}=.*not a finite number"):
        env_float(name, 1.0)


@pytest.mark.parametrize(("env", "named"), [
    ({"AUXOT_TICK_SECONDS": "nan"}, "AUXOT_TICK_SECONDS"),
    ({"AUXOT_BODY_READ_TIMEOUT_SECONDS": "inf"}, "AUXOT_BODY_READ_TIMEOUT_SECONDS"),
    ({"AUXOT_CALLBACK_JITTER": "nan"}, "AUXOT_CALLBACK_JITTER"),
    ({"AUXOT_CALLBACK_RETRY_SCHEDULE": "0,5,nan"}, "AUXOT_CALLBACK_RETRY_SCHEDULE"),
    ({"AUXOT_CALLBACK_RETRY_SCHEDULE": "0,inf"}, "AUXOT_CALLBACK_RETRY_SCHEDULE"),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    ({"Q_LOG_LEVEL": "loud"}, "Q_LOG_LEVEL"),
    ({"REQUEST_LOG_LEVEL": "10"}, "REQUEST_LOG_LEVEL"),
    ({"REDIS_URL": "garbage"}, "REDIS_URL"),
    ({"AUXOT_RATELIMIT_REDIS_URL": "http://:pw@cache:6379/0"}, "AUXOT_RATELIMIT_REDIS_URL"),
    ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
    ({"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/auxot-metrics"}, "PROMETHEUS_MULTIPROC_DIR"),
    ({"AUXOT_TRUSTED_PROXIES": "10.0.0.0/33"}, "AUXOT_TRUSTED_PROXIES"),
    ({"AUXOT_TRUSTED_PROXIES": "*, 10.0.0.1"}, "AUXOT_TRUSTED_PROXIES"),
    # Every address trusted: the caller's own X-Forwarded-For would choose its address.
    ({"AUXOT_TRUSTED_PROXIES": "0.0.0.0/0"}, "AUXOT_TRUSTED_PROXIES"),
    ({"AUXOT_TRUSTED_PROXIES": "127.0.0.1, ::/0"}, "AUXOT_TRUSTED_PROXIES"),
    ({"AUXOT_TRUSTED_PROXIES": "10.0.0.0/0"}, "AUXOT_TRUSTED_PROXIES"),
    ({"GUNICORN_FORWARDED_ALLOW_IPS": "0.0.0.0/0"}, "GUNICORN_FORWARDED_ALLOW_IPS"),
    ({"GUNICORN_FORWARDED_ALLOW_IPS": "proxy.internal"}, "GUNICORN_FORWARDED_ALLOW_IPS"),
    ({"AUXOT_FORWARDED_HEADER": "X-Real-IP"}, "AUXOT_FORWARDED_HEADER"),
])
def test_a_malformed_value_stops_start_up_naming_its_variable(env, named):
    done = settings_printed(env, "DEBUG")
    assert done.returncode != 0
    [message] = [line for line in done.stderr.splitlines()
                 if line.startswith("django.core.exceptions.ImproperlyConfigured")]
    assert named in message
    assert ":pw@" not in done.stderr  # a URL's password is not repeated


@pytest.mark.parametrize(("env", "names", "shown"), [
    ({"LOG_LEVEL": "debug", "Q_LOG_LEVEL": "error"},
     ("LOGGING['root']['level']", "LOGGING['loggers']['django-q']['level']"), "DEBUG ERROR"),
    ({"REDIS_URL": "rediss://cache:6380/1", "AUXOT_RATELIMIT_REDIS_URL": "off"},
     ("REDIS_URL", "AUXOT_RATELIMIT_REDIS_URL or '-'"), "rediss://cache:6380/1 -"),
    ({"REDIS_URL": "unix:///run/redis.sock"}, ("REDIS_URL",), "unix:///run/redis.sock"),
    # The proxies whose X-Forwarded-For is believed: this host's loopback unless set, and
    # gunicorn's own list when only that is set (one setting for both).
    ({}, ("AUXOT_TRUSTED_PROXIES",), "['127.0.0.1', '::1']"),
    ({"GUNICORN_FORWARDED_ALLOW_IPS": "10.1.1.1,10.1.1.2"},
     ("AUXOT_TRUSTED_PROXIES",), "['10.1.1.1', '10.1.1.2']"),
    ({"GUNICORN_FORWARDED_ALLOW_IPS": "10.1.1.1", "AUXOT_TRUSTED_PROXIES": "10.0.0.0/8, ::1"},
     ("AUXOT_TRUSTED_PROXIES",), "['10.0.0.0/8', '::1']"),
    ({"AUXOT_TRUSTED_PROXIES": ""}, ("AUXOT_TRUSTED_PROXIES or '-'",), "-"),
    # The header those proxies write: X-Forwarded-For unless set, any case.
    ({}, ("AUXOT_FORWARDED_HEADER",), "X-Forwarded-For"),
    ({"AUXOT_FORWARDED_HEADER": "forwarded"}, ("AUXOT_FORWARDED_HEADER",), "Forwarded"),
    ({"GUNICORN_FORWARDED_ALLOW_IPS": " * "}, ("AUXOT_TRUSTED_PROXIES",), "['*']"),
])
def test_good_values_start(env, names, shown):
    done = settings_printed(env, *names)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == shown.split()


def test_secret_key_fallbacks_come_from_the_environment():
    """Rotating SECRET_KEY needs the old one among the fallbacks, or every organization
    secret and signing secret stored with it is unreadable; there was no way to set it."""
    done = settings_printed({"SECRET_KEY": "new", "SECRET_KEY_FALLBACKS": "old-2, old-1"},
                            "SECRET_KEY_FALLBACKS")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['old-2', 'old-1']"


def test_a_secret_stored_under_the_old_key_reads_after_a_rotation(settings):
    from auxot.crypto import DecryptionError, decrypt, encrypt

    settings.SECRET_KEY = "the-old-key"
    stored = encrypt("s3cret-value", purpose="secret")
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "the-new-key", []
    with pytest.raises(DecryptionError):
        decrypt(stored, purpose="secret")
    settings.SECRET_KEY_FALLBACKS = ["the-old-key"]
    assert decrypt(stored, purpose="secret") == "s3cret-value"


@pytest.mark.parametrize(("env", "shown"), [
    ({}, "True 0 False"),  # production: the admin's cookies over HTTPS only
    ({"DEBUG": "1"}, "False 0 False"),
    ({"AUXOT_SECURE_COOKIES": "0"}, "False 0 False"),
    ({"AUXOT_HSTS_SECONDS": "31536000", "AUXOT_SSL_REDIRECT": "1"}, "True 31536000 True"),
])
def test_https_settings(env, shown):
    done = settings_printed(env, "SESSION_COOKIE_SECURE and s.CSRF_COOKIE_SECURE",
                            "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == shown.split()


def test_a_production_environment_passes_the_deploy_check():
    """`manage.py check --deploy` warned of cookies sent over http and of HSTS and the https
    redirect, and no setting could answer it."""
    import subprocess
    import sys

    from tests.processes import ROOT

    env = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "k" * 50 + "-not-a-dev-key-9f8e7d6c5b4a3",
           "ALLOWED_HOSTS": "auxot.example.com", "AUXOT_HSTS_SECONDS": "31536000",
           "AUXOT_SSL_REDIRECT": "1", "AUXOT_HSTS_INCLUDE_SUBDOMAINS": "1",
           "AUXOT_HSTS_PRELOAD": "1", "DJANGO_SETTINGS_MODULE": "auxot.settings",
           "AUXOT_PUBLIC_BASE_URL": "https://auxot.example.com",
           "DATABASE_URL": "sqlite:////tmp/auxot-deploy-check.sqlite3"}
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level",
                           "WARNING"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _read_by_the_code() -> set[str]:
    """Every environment variable the server's code reads (settings, gunicorn.conf.py, the
    apps), by name: calls of os.environ.get, os.getenv, the env_* helpers and gunicorn's
    _int, and os.environ[...] reads, found in the syntax tree (so a read with either quote
    counts, and a snippet's text that merely shows one does not)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    sources = [root / "auxot" / "settings.py", root / "gunicorn.conf.py"]
    sources += [path for app in ("auxot", "apikeys", "workflows", "intakes")
                for path in (root / app).rglob("*.py") if "migrations" not in path.parts]

    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def name_of(node) -> str | None:
        ok = isinstance(node, ast.Constant) and isinstance(node.value, str)
        return node.value if ok and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.value) else None

    names = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if ((called == "get" and is_environ(func.value)) or called == "getenv"
                        or called == "_int" or called.startswith("env_")):
                    names.add(name_of(node.args[0]))
            elif (isinstance(node, ast.Subscript) and is_environ(node.value)
                  and isinstance(node.ctx, ast.Load)):
                names.add(name_of(node.slice))
    return names - {None}



def test_the_failed_work_views_default_is_at_most_the_pages_longest_choice():
    from workflows.admin_replay import MAX_DAYS

    done = settings_printed({"AUXOT_REPLAY_FAILED_DAYS": str(MAX_DAYS)}, "AUXOT_REPLAY_FAILED_DAYS")
    assert done.returncode == 0 and done.stdout.split() == [str(MAX_DAYS)], done.stderr
    done = settings_printed({"AUXOT_REPLAY_FAILED_DAYS": str(MAX_DAYS + 1)}, "DEBUG")
    assert done.returncode != 0
    assert f"AUXOT_REPLAY_FAILED_DAYS={MAX_DAYS + 1} is above the maximum of {MAX_DAYS}" in (
        done.stderr)


def test_every_setting_the_code_reads_is_in_the_readmes_settings_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Settings (environment variables)", 1)[1].split("\n## ", 1)[0]
    documented = {name for line in section.splitlines() if line.startswith("| `")
                  for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0])}
    read = _read_by_the_code()
    assert {"SECRET_KEY_FALLBACKS", "GUNICORN_KEEPALIVE", "AUXOT_LEASE_GRACE_SECONDS",
            "PORT"} <= read
    assert sorted(read - documented) == []
    # And the other way: a variable in the table that nothing reads is a setting an operator
    # sets to no effect.
    assert sorted(documented - read) == []


def test_every_table_in_the_readme_renders_as_one_table():
    """A blank line inside a table (the settings table had one) ends it: the rows after it
    have no header and render as raw `|` text. Every block of table rows starts with a
    header and its separator, and has that header's number of columns."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks, block, fenced = [], [], False
    for number, line in enumerate(readme.splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("|") and not fenced:
            block.append((number, line))
        elif block:
            blocks.append(block)
            block = []
    assert len(blocks) > 10
    separator = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")
    for block in blocks:
        (first, header), *rest = block
        assert rest and separator.match(rest[0][1]), f"README line {first}: no header"

        def columns(row: str) -> int:
            return len(re.split(r"(?<!\\)\|", re.sub(r"`[^`]*`", "x", row))) - 2
        width = columns(header)
        for number, row in rest:
            assert columns(row) == width, f"README line {number}: not {width} columns"


def test_a_command_without_its_settings_says_so_in_one_line():
    """`manage.py check` with no SECRET_KEY (and no DEBUG=1) printed a 20-line traceback
    through the settings module; it prints the one line that names the setting."""
    import subprocess
    import sys

    from tests.processes import ROOT

    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "auxot.settings"}
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("manage.py: SECRET_KEY must be set")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 2


def test_every_system_check_id_is_named_in_the_readme():
    """An operator meets these ids in `manage.py check` or a refused `qcluster` start:
    `workflows.E004` (a step timeout the task timeout would cut) was named nowhere. An id is
    named whole (`auxot.W003`) or as the end of a range (`workflows.E001`, an en dash, `E004`)."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    named = set(re.findall(r"`([a-z]+\.[EW]\d{3})`", readme))
    for app, first, last in re.findall(r"`([a-z]+)\.([EW]\d{3})`\u2013`([EW]\d{3})`", readme):
        kind, low, high = first[0], int(first[1:]), int(last[1:])
        named |= {f"{app}.{kind}{n:03d}" for n in range(low, high + 1)}
    defined = {check_id for app in ("auxot", "intakes", "workflows", "apikeys")
               for path in (root / app).rglob("checks.py")
               for check_id in re.findall(r'id="([a-z]+\.[EW]\d{3})"', path.read_text())}
    assert len(defined) >= 9
    assert sorted(defined - named) == []
