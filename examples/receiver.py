"""A tiny Auxot callback receiver: verifies each POST, drops duplicates, prints the rest.

    python examples/receiver.py --port 9000 --secret whsec_...
    python examples/receiver.py --port 9000 --demo-intake <intake id>   # secret from var/

Answers 204 when a callback is verified (or already seen), 400 when it is not. Needs only
the standard library and `standardwebhooks`. A real receiver keeps the seen ids in its
database (unique constraint on webhook-id) and queues slow work instead of doing it inline.
"""

import argparse
import contextlib
import errno
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

DEMO_SECRETS = Path(__file__).resolve().parent.parent / "var" / "demo-secrets.json"
MAX_BODY = 16 * 1024 * 1024  # a callback body is the poll body: bounded, far below this


def make_handler(webhook: Webhook, seen: set[str], lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                return self._answer(411)  # Auxot always sends Content-Length
            if not 0 <= length <= MAX_BODY:
                return self._answer(413)
            body = self.rfile.read(length)
            try:
                payload = webhook.verify(body, dict(self.headers))
            except (WebhookVerificationError, ValueError) as exc:
                # A malformed signature (`garbage`, `v1,a`) or a body that is not UTF-8 raises
                # ValueError (binascii.Error, UnicodeDecodeError), not the library's own error.
                print(f"REJECTED ({type(exc).__name__}: {exc})", flush=True)
                return self._answer(400)
            msg_id = self.headers["webhook-id"]
            with lock:
                duplicate = msg_id in seen
                seen.add(msg_id)
            if duplicate:
                print(f"duplicate {msg_id}: already handled", flush=True)
            else:
                print(f"verified {msg_id}: work {payload.get('work_id')} is "
                      f"{payload.get('status')}\n{json.dumps(payload, indent=2)}", flush=True)
            return self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args) -> None:  # keep the output to callbacks
            pass

    return Handler


def _secret(args: argparse.Namespace) -> str:
    if args.demo_intake:
        if not DEMO_SECRETS.exists():
            sys.exit(f"No {DEMO_SECRETS}: `make run` writes it when it seeds the demo, so start "
                     "the demo first (or pass --secret whsec_...).")
        secrets = json.loads(DEMO_SECRETS.read_text()).get("signing_secrets", {})
        if args.demo_intake not in secrets:
            sys.exit(f"No secret for intake {args.demo_intake} in {DEMO_SECRETS}")
        return secrets[args.demo_intake]
    # AUXOT_CALLBACK_SECRET, as `auxot verify-callback` reads it (AUXOT_WEBHOOK_SECRET: the
    # name this example used before, still read).
    secret = (args.secret or os.environ.get("AUXOT_CALLBACK_SECRET", "")
              or os.environ.get("AUXOT_WEBHOOK_SECRET", ""))
    if not secret:
        sys.exit("Pass --secret whsec_... (or set AUXOT_CALLBACK_SECRET, or --demo-intake ID).")
    return secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="the intake's signing secret (whsec_...)")
    parser.add_argument("--demo-intake", help="read the secret of this demo intake from var/")
    args = parser.parse_args()
    handler = make_handler(Webhook(_secret(args)), set(), threading.Lock())
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    except OSError as exc:  # another receiver on it, say: one line, not a traceback
        reason = ("is already in use" if exc.errno == errno.EADDRINUSE
                  else f"cannot be used ({exc.strerror})")
        sys.exit(f"Port {args.port} on 127.0.0.1 {reason}: pick another with --port (and "
                 "point the callback URL at it).")
    print(f"Listening on http://127.0.0.1:{args.port}/hook (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
