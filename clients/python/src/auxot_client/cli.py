"""`auxot`: trigger an intake and wait for its work item from a shell, CI job or cron.

Configuration comes from the environment: AUXOT_BASE_URL and AUXOT_API_KEY (the key is
never printed, and there is no flag that would put it in shell history; --api-key-file
reads it from a file). Exit codes: 0 completed, 1 failed (or a callback that does not
verify), 2 timed out, 3 usage / configuration / 401 / 404 / a request the server refused,
4 the server stayed unavailable (429/5xx/network) for a trigger. `auxot replay WORK_ID
--wait` exits like `run`; without --wait it prints the new work id.

Progress (status changes, and on a terminal a live line with elapsed time, status and the
current step) goes to stderr; results go to stdout, so `result=$(auxot run ...)` works.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, NoReturn, TextIO

from auxot_client import client as api
from auxot_client._version import VERSION

EXIT_COMPLETED, EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner cancelling the job, a supervisor stopping it): handled as Ctrl-C
    is, with its own exit status, instead of a silent death."""


def _terminate(signum, frame) -> NoReturn:
    raise Terminated


def _interrupted(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
ENV_INTAKE_ID = "AUXOT_INTAKE_ID"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"auxot: error: {message}\n")


def _id(what: str):
    """An argparse type: a non-empty id (`auxot run "$AUXOT_INTAKE_ID"` with the variable
    unset sent `/v1/intake//…` and met a 404 that blamed the key)."""
    def check(value: str) -> str:
        value = value.strip()
        if not value:
            hint = f" (is ${ENV_INTAKE_ID} set?)" if what == "intake id" else ""
            raise argparse.ArgumentTypeError(f"the {what} is empty{hint}")
        return value
    return check


def _step_text(body: dict) -> str:
    step = body.get("current_step")
    if not isinstance(step, dict):
        return ""
    steps = body.get("steps")
    total = len(steps) if isinstance(steps, list) else "?"
    return (f"step {step.get('position', '?')}/{total} '{step.get('name', '?')}' "
            f"({step.get('kind', '?')})")


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # not \t, \n
_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _safe(text: object) -> str:
    """Text from the server, printable on a terminal: control characters (an escape sequence
    in a comment or an error message could retitle or clear the screen) are shown escaped."""
    return _ONE_LINE.sub(lambda found: f"\\x{ord(found.group()):02x}"
                        if ord(found.group()) < 0x100 else f"\\u{ord(found.group()):04x}",
                        str(text))


class Progress:
    """Status changes as lines; on a TTY also a live line redrawn twice a second."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.body: dict = {}
        self._last_key: tuple | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            self._clear()

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self) -> None:
        if self.tty and self.body:
            status = _safe(self.body.get("status", ""))
            step = _safe(_step_text(self.body))
            self.stream.write(f"\r\033[K[{self._elapsed()}] {status}"
                              f"{' · ' + step if step else ''}")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._draw()

    def update(self, poll: api.Poll) -> None:
        body = poll.body
        # A line per status, step, what it waits on and an approval's decision: a CI log
        # shows why it waits (a provider's line moving only redraws a terminal's status).
        waiting = body.get("waiting_on") or {}
        key = (body.get("status"), (body.get("current_step") or {}).get("position"),
               waiting.get("kind"), waiting.get("after"), waiting.get("decision"))
        with self._lock:
            self.body = body
            if key != self._last_key:
                self._last_key = key
                self._clear()
                step = _safe(_step_text(body))
                line = f"[{self._elapsed()}] {_safe(body.get('status'))}"
                line += f" {step}" if step else ""
                line += f": {_safe(body.get('diagnosis'))}" if body.get("diagnosis") else ""
                self.stream.write(line + "\n")
            self._draw()
            self.stream.flush()


def _read_data(value: str | None, stdin: TextIO | None) -> Any:
    # stdin is None when the process was started with it closed (`0<&-`, some supervisors)
    if value is None:
        text = "" if stdin is None or stdin.isatty() else stdin.read()
        source = "stdin"
    elif value == "-":
        if stdin is None:
            raise UsageError("--data - reads the input from stdin, which is closed: give "
                             "--data JSON or --data @FILE")
        text, source = stdin.read(), "stdin"
    elif value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise UsageError(f"cannot read {value[1:]}: {exc.strerror}") from None
        source = value[1:]
    else:
        text, source = value, "--data"
    if not text.strip():
        return {}  # nothing given: the workflow gets an empty object
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None


def _client(args: argparse.Namespace) -> api.Client:
    key = None
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the key file: {exc.strerror}") from None
    return api.Client(base_url=args.base_url, api_key=key)


def _print_json(value: Any, out: TextIO) -> None:
    # JSON escapes C0 controls itself; C1 controls and line separators it leaves raw.
    out.write(_CONTROL.sub(lambda found: f"\\u{ord(found.group()):04x}",
                           json.dumps(value, indent=2, ensure_ascii=False)) + "\n")


def _finish(body: dict, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.json:
        _print_json(body, out)
    elif body["status"] == "completed":
        _print_json(body.get("output"), out)
    if body["status"] == "completed":
        return EXIT_COMPLETED
    error = body.get("error") or {}
    err.write(f"auxot: work {_safe(body.get('work_id', '?'))} failed: "
              f"{_safe(body.get('diagnosis') or error)}\n")
    return EXIT_FAILED


def _timeout(args: argparse.Namespace) -> float:
    try:
        return api.duration_parse(args.timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _wait(client: api.Client, intake_id: str, work_id: str, args: argparse.Namespace,
          out: TextIO, err: TextIO, timeout: float | None = None) -> int:
    timeout = _timeout(args) if timeout is None else timeout
    try:
        with Progress(err) as progress:
            # Each long-poll answers as soon as the status, step or wait changes (the server
            # is given the state it last named): every change is printed within a moment,
            # on a terminal or in a CI log, at one request per change.
            body = client.wait(intake_id, work_id, timeout=timeout, on_poll=progress.update)
    except KeyboardInterrupt as exc:
        # Only the waiting stops: say how to pick the item up again.
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        err.write(f"auxot: {what}; work {_safe(work_id)} continues on the server "
                  f"(auxot wait {_safe(intake_id)} {_safe(work_id)})\n")
        return _interrupted(exc)
    except api.WaitTimeout as exc:
        status = _safe((exc.last or {}).get("status", "unknown"))
        err.write(f"auxot: timed out after {args.timeout}; work {_safe(work_id)} is still "
                  f"{status}; it continues on the server "
                  f"(auxot wait {_safe(intake_id)} {_safe(work_id)})\n")
        if exc.last_error:  # not slow work: the server could not be asked
            err.write(f"  the last poll failed: {_safe(exc.last_error)}\n")
        if args.json and exc.last:
            _print_json(exc.last, out)
        return EXIT_TIMEOUT
    return _finish(body, args, out, err)


def cmd_trigger(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    data = _read_data(args.data, sys.stdin)
    work = _client(args).trigger(args.intake_id, data, **_trigger_options(args))
    if args.json:
        _print_json(work, out)
    else:
        out.write(_safe(work["work_id"]) + "\n")
    return EXIT_COMPLETED


def cmd_wait(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _wait(_client(args), args.intake_id, args.work_id, args, out, err)


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    data = _read_data(args.data, sys.stdin)
    timeout = _timeout(args)
    deadline = time.monotonic() + timeout
    client = _client(args)
    # --timeout bounds the whole run: the trigger's retries too, not only the waiting.
    work = client.trigger(args.intake_id, data, retry_for=min(timeout, api.TRIGGER_RETRY_FOR),
                          **_trigger_options(args))
    err.write(f"auxot: work_id {_safe(work['work_id'])}\n  {_safe(work['status_url'])}\n")
    err.flush()
    return _wait(client, args.intake_id, work["work_id"], args, out, err,
                 timeout=max(1.0, deadline - time.monotonic()))


def _replay_target(args: argparse.Namespace) -> tuple[str, str]:
    """(intake id, work id) from WORK_ID and --intake / $AUXOT_INTAKE_ID, or a status URL."""
    match = re.search(r"/v1/intake/([^/?#]+)/work/([^/?#]+)", args.work_id)
    if match:
        return match.group(1), match.group(2)
    intake_id = args.intake or os.environ.get(ENV_INTAKE_ID, "")
    if not intake_id:
        raise UsageError(f"give --intake INTAKE_ID (or set ${ENV_INTAKE_ID}), or pass the "
                         "work item's status URL instead of its id")
    return intake_id, args.work_id


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    intake_id, work_id = _replay_target(args)
    client = _client(args)
    work = client.replay(intake_id, work_id, start_over=args.from_ == "start",
                         reason=args.reason or "", idempotency_key=args.idempotency_key)
    if not args.wait:
        if args.json:
            _print_json(work, out)
        else:
            out.write(_safe(work["work_id"]) + "\n")
        return EXIT_COMPLETED
    err.write(f"auxot: replay of {_safe(work_id)}: work_id {_safe(work['work_id'])}\n"
              f"  {_safe(work['status_url'])}\n")
    err.flush()
    return _wait(client, intake_id, work["work_id"], args, out, err)


def cmd_verify_callback(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    secret = args.secret or os.environ.get("AUXOT_CALLBACK_SECRET", "")
    if not secret:
        raise UsageError("give --secret whsec_… or set AUXOT_CALLBACK_SECRET")
    if sys.stdin is None:
        raise UsageError("verify-callback reads the request from stdin, which is closed")
    raw = sys.stdin.buffer.read()
    try:
        headers, body = api.http_request_parse(raw)
        payload = api.callback_verify(secret=secret, headers=headers, body=body)
    except api.CallbackVerificationError as exc:
        # Its message may quote what the request held (a header's text): escaped like any.
        err.write(f"auxot: {_safe(exc)}\n")
        return EXIT_FAILED
    _print_json(payload, out)
    return EXIT_COMPLETED


def _trigger_options(args: argparse.Namespace) -> dict:
    return {"correlation_id": args.correlation_id, "idempotency_key": args.idempotency_key,
            "callback_url": args.callback_url}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="auxot", description=__doc__.split("\n\n")[0],
                     epilog=f"Environment: AUXOT_BASE_URL, AUXOT_API_KEY ({ENV_INTAKE_ID} "
                     "for replay, AUXOT_CALLBACK_SECRET for verify-callback).")
    parser.add_argument("--version", action="version", version=f"auxot {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--base-url", help=f"default: ${api.ENV_BASE_URL}")
        sub.add_argument("--api-key-file", metavar="PATH",
                         help=f"read the key from a file instead of ${api.ENV_API_KEY}")
        sub.add_argument("--json", action="store_true", help="print the full JSON answer")

    def trigger_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("intake_id", type=_id("intake id"))
        sub.add_argument("--data", metavar="JSON|@FILE|-",
                         help="the input: JSON text, @file, or - for stdin (default: stdin "
                         "when piped, else {})")
        sub.add_argument("--correlation-id", help="sent as Auxot-Correlation-Id")
        sub.add_argument("--idempotency-key", help="sent as Idempotency-Key")
        sub.add_argument("--callback-url", help="sent as Auxot-Callback-Url")

    def wait_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--timeout", default="30m", help="e.g. 90s, 30m, 1h (default 30m)")

    trigger = commands.add_parser("trigger", help="POST to an intake; print the work id")
    trigger_options(trigger)
    common(trigger)
    trigger.set_defaults(handler=cmd_trigger)

    wait = commands.add_parser("wait", help="wait until a work item is completed or failed")
    wait.add_argument("intake_id", type=_id("intake id"))
    wait.add_argument("work_id", type=_id("work id"))
    wait_options(wait)
    common(wait)
    wait.set_defaults(handler=cmd_wait)

    run = commands.add_parser("run", help="trigger, then wait")
    trigger_options(run)
    wait_options(run)
    common(run)
    run.set_defaults(handler=cmd_run)

    replay = commands.add_parser(
        "replay", help="replay a failed work item (a new item; the original stays failed)")
    replay.add_argument("work_id", type=_id("work id"),
                        help="the failed item's work id, or its status URL")
    replay.add_argument("--intake", help=f"the intake id (default: ${ENV_INTAKE_ID})")
    replay.add_argument("--from", dest="from_", choices=["failed_step", "start"],
                        default="failed_step", help="failed_step (default): carry the "
                        "completed steps; start: run every step again, with new keys")
    replay.add_argument("--reason", help="why you replay it (kept in the audit log)")
    replay.add_argument("--idempotency-key", help="sent as Idempotency-Key")
    replay.add_argument("--wait", action="store_true",
                        help="wait for the new item; exit codes as for `run`")
    wait_options(replay)
    common(replay)
    replay.set_defaults(handler=cmd_replay)

    verify = commands.add_parser(
        "verify-callback", help="verify a received callback (raw HTTP request on stdin)")
    verify.add_argument("--secret", help="the intake's whsec_… secret (default: "
                        "$AUXOT_CALLBACK_SECRET, which keeps it out of shell history)")
    verify.set_defaults(handler=cmd_verify_callback)
    return parser


_HINTS = {
    api.AuthError: "  check AUXOT_API_KEY: the whole key, not revoked or expired, no quotes.\n",
    api.NotFoundError: "  check the intake id, that the intake and its workflow are active, "
                       "and that this key may use it (a team key: only its team's intakes).\n",
}


def _hint(exc: Exception) -> str:
    """What to check, unless Auxot's own answer says it already (its 404 detail does)."""
    problem = getattr(exc, "problem", None) or {}
    if isinstance(exc, api.NotFoundError) and problem.get("code") == "not_found" and (
            problem.get("detail")):
        return ""
    return _HINTS.get(type(exc), "")


def _error_json(args: argparse.Namespace, exc: Exception, exit_code: int, out: TextIO) -> None:
    """With --json, stdout says what went wrong too (a script reads stdout only): `error` is
    the server's problem+json body when it sent one, else one of the same shape."""
    if not getattr(args, "json", False):
        return
    problem = dict(getattr(exc, "problem", None) or {})
    if not problem:
        problem = {"title": type(exc).__name__, "status": getattr(exc, "status", None),
                   "detail": str(exc), "code": getattr(exc, "code", None) or (
                       "unavailable" if exit_code == EXIT_UNAVAILABLE else "usage")}
    answer = {"error": problem, "exit_code": exit_code}
    if getattr(exc, "idempotency_key", None):
        answer["idempotency_key"] = exc.idempotency_key
    _print_json(answer, out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args, out, err)
    except (UsageError, api.ConfigError, api.AuthError, api.NotFoundError,
            api.RequestError) as exc:
        err.write(f"auxot: {_safe(exc)}\n{_hint(exc)}")
        _error_json(args, exc, EXIT_USAGE, out)
        return EXIT_USAGE
    except api.TransientError as exc:
        err.write(f"auxot: {_safe(exc)}\n")
        if exc.idempotency_key and exc.status not in (429, 503):  # those accepted nothing
            err.write(f"  it may have been accepted: retry with --idempotency-key "
                      f"{_safe(exc.idempotency_key)} to get that work item, never a second one\n")
        _error_json(args, exc, EXIT_UNAVAILABLE, out)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt as exc:
        err.write(f"auxot: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}\n")
        return _interrupted(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
