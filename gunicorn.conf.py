"""gunicorn settings for `gunicorn auxot.wsgi` (read from the working directory).

Everything is overridable on the command line or with GUNICORN_CMD_ARGS.
"""

import os

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# The app answers an oversized Authorization header (or any header up to 16 KiB) with a
# JSON 401/4xx itself; gunicorn's default 8 KiB cap would answer a plain-text 400 first.
limit_request_field_size = 16384
# SIGTERM: stop accepting, let in-flight requests finish for up to this long.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
timeout = 30
