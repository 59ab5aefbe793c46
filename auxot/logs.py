"""Log context (request id, intake, work item, key lookup id) and the two log formats.

`LOG_FORMAT=text` (the default) writes human lines; `LOG_FORMAT=json` writes one JSON object
per line with a fixed set of top-level fields. The context is a contextvar, so every line a
request or a work item's run logs carries its ids without passing them around.

Either way a record cannot forge another one: a line's text holds what callers and tenants
chose (a path, a host, a name, an exception's message). JSON escapes every control
character; the text format writes each one as its Python escape (`\n`, `\x1b`, `\u2028`),
and indents the lines of a traceback, so every line that starts without a space starts a
record and no terminal runs an escape sequence a caller sent.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from django.http import HttpRequest
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from auxot.credentials import credential_formats_redacted

CONTEXT_FIELDS = ("request_id", "intake_id", "work_id", "key_lookup_id")
_context: ContextVar[dict[str, str]] = ContextVar("auxot_log_context", default={})  # noqa: B039


def log_context_get() -> dict[str, str]:
    return _context.get()


def log_context_bind(**values: str | None) -> object:
    """Add ids to the current context; returns a token for `log_context_reset`."""
    merged = {**_context.get(), **{k: str(v) for k, v in values.items() if v}}
    return _context.set(merged)


def log_context_reset(token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    token = log_context_bind(**values)
    try:
        yield
    finally:
        log_context_reset(token)


def current_request_id() -> str:
    return _context.get().get("request_id", "")


class ContextFilter(logging.Filter):
    """Puts the context's ids on every record (and `context`, a text suffix of them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for name in CONTEXT_FIELDS:
            if not getattr(record, name, None) and name in context:
                setattr(record, name, context[name])
        pairs = [f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                 if getattr(record, name, None)]
        record.context = (" [" + " ".join(pairs) + "]") if pairs else ""
        return True


def log_clean(text: str) -> str:
    """`text` with any credential found by its format REDACTED: a message or an exception
    quoting what a caller sent or a tenant configured (a token in a URL, a header echoed in
    an error) never writes a secret to a log. About 9 µs for a typical line."""
    return credential_formats_redacted(text)


def log_text(text: str) -> str:
    """`text` with every character that is not printable (line breaks, ANSI escapes and other
    controls, Unicode line separators and format characters such as bidi overrides) written
    as its Python escape: what a caller sent stays readable and on its one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


# The lines of a traceback or a stack under a text record start with this.
CONTINUATION = "  "


class TextFormatter(logging.Formatter):
    """The text format: the record on one line (`log_text`), then its traceback or stack
    (if any), each line indented by CONTINUATION and escaped too. An exception's message may
    quote a caller; its own line breaks stay inside the indented block."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [log_text(log_clean(self.formatMessage(record)))]
        # Never the cached record.exc_text: another handler's formatter may have written it.
        trailer = [self.formatException(record.exc_info)] if record.exc_info else []
        if record.stack_info:
            trailer.append(self.formatStack(record.stack_info))
        lines += [CONTINUATION + log_text(line)
                  for text in trailer for line in log_clean(text).rstrip("\n").split("\n")]
        return "\n".join(lines)


# Record attributes that are not ours to print (the logging module's own, plus `context`).
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"context", "message", "asctime",
                                                     "taskName"}


def _shown(value):
    """An extra as a log line may carry it. Django's request logger adds the request itself,
    whose text is its full path: the query string may hold what a caller did not mean to
    log (a token in `?token=`), as the request log line never shows it. Method and path."""
    if isinstance(value, HttpRequest):
        return f"{value.method} {log_clean(value.path)}"
    return log_clean(value) if isinstance(value, str) else value


class JsonFormatter(_JsonFormatter):
    """One object per line: time, level, logger, event, message, the context ids, and any
    `extra=` the caller gave (status, duration_ms, ...). `event` defaults to the logger name."""

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        log_data["level"] = record.levelname
        log_data["logger"] = log_clean(record.name)
        log_data["event"] = log_clean(str(getattr(record, "event", None) or record.name))
        log_data["message"] = log_clean(record.getMessage())
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None):
                log_data[name] = log_clean(str(getattr(record, name)))  # a caller's request id
        for name, value in vars(record).items():
            if name not in _RESERVED and name not in log_data and name not in CONTEXT_FIELDS:
                log_data[name] = _shown(value)
        if record.exc_info:
            log_data["exception"] = log_clean(self.formatException(record.exc_info))
        log_data.update(message_dict)

    def format(self, record: logging.LogRecord) -> str:
        record.exc_text = None  # formatted into `exception` above, not appended as text
        log_data: dict = {}
        self.add_fields(log_data, record, {})
        return self.serialize_log_record(log_data)
