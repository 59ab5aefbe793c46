"""Test settings: the real settings plus what only tests need."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")

from auxot.settings import *  # noqa: F403
from auxot.settings import BASE_DIR, DATABASES

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: end-to-end tests share it with a real qcluster subprocess.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / "test.sqlite3")}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The browser tests sign in over live_server's plain http.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False

# Outbound requests reach real receivers on 127.0.0.1 (tests that prove refusals empty this).
AUXOT_OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
# The tests' receivers take callers' Auxot-Callback-Url too (test_callback_ssrf narrows it).
AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
AUXOT_OUTBOUND_ALLOWED_HOSTS = []
AUXOT_CALLBACK_ALLOWED_NETWORKS = []
# Callbacks: over http, on a schedule measured in seconds.
AUXOT_CALLBACK_ALLOW_HTTP = True
AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 1, 1, 1]
AUXOT_CALLBACK_JITTER = 0.0
AUXOT_CALLBACK_TIMEOUT_SECONDS = 2.0
