"""Retention of finished work items: redact what callers sent and steps produced, or delete
the rows. Also the JSON-path redaction applied to a trigger's body before it is stored.

Paths are a small, predictable subset of JSONPath: `$`, then `.name`, `['name']`, `[3]` or
`[*]` segments (`$.customer.email`, `$.items[*].card`, `$['odd key']`). A tenant writes them;
no filters, no recursion, so a path costs at most one walk of the body.
"""

import re
from datetime import datetime
from typing import Any

from django.db import transaction

from workflows.models import StepRun, WorkItem

REDACTED = "[REDACTED]"
MAX_PATHS = 50
MAX_PATH_LENGTH = 200
_SEGMENT = re.compile(
    r"""\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)"""
    r"""|\[(?:(?P<index>\d{1,6})|(?P<star>\*)|'(?P<quoted>[^'\\]{1,100})'|"(?P<dquoted>[^"\\]{1,100})")\]"""
)
_STAR = object()


def json_path_parse(path: str) -> list:
    """['customer', 'email'] for '$.customer.email'; raises ValueError on anything else."""
    if not isinstance(path, str) or not path.startswith("$") or len(path) > MAX_PATH_LENGTH:
        raise ValueError(f"{str(path)[:60]!r} is not a JSON path such as $.customer.email")
    segments, at = [], 1
    while at < len(path):
        match = _SEGMENT.match(path, at)
        if match is None:
            raise ValueError(f"{path[:60]!r}: cannot read the path at {path[at:at + 20]!r} "
                             "(use .name, ['name'], [index] or [*])")
        if match["index"] is not None:
            segments.append(int(match["index"]))
        elif match["star"]:
            segments.append(_STAR)
        else:
            segments.append(match["name"] or match["quoted"] or match["dquoted"])
        at = match.end()
    if not segments:
        raise ValueError("'$' alone would redact the whole body; name a field inside it")
    return segments


def json_paths_check(paths: Any) -> list[str]:
    """The list, validated (for model clean and the admin form)."""
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError('a JSON list of paths, e.g. ["$.customer.email"]')
    if len(paths) > MAX_PATHS:
        raise ValueError(f"at most {MAX_PATHS} paths")
    for path in paths:
        json_path_parse(path)
    return paths


def _redact(value: Any, segments: list) -> Any:
    if not segments:
        return REDACTED
    head, rest = segments[0], segments[1:]
    if isinstance(value, dict) and isinstance(head, str) and head in value:
        return {**value, head: _redact(value[head], rest)}
    if isinstance(value, list):
        if head is _STAR:
            return [_redact(element, rest) for element in value]
        if isinstance(head, int) and head < len(value):
            return [*value[:head], _redact(value[head], rest), *value[head + 1:]]
    return value  # the path is absent here: nothing to redact


def json_paths_redact(value: Any, paths: list[str]) -> Any:
    """A copy of `value` with every value at `paths` replaced by "[REDACTED]"."""
    for path in paths:
        value = _redact(value, json_path_parse(path))
    return value


def _strip_messages(rows: list, message: str) -> None:
    """Keep an error's code and step; drop its message (it may quote the payload)."""
    for row in rows:
        row.error = {k: v for k, v in row.error.items() if k in ("code", "step", "step_position")}
        row.error["message"] = message


def work_items_redact(*, ids: list, now: datetime) -> int:
    """Remove inputs, outputs, step results and error messages; the rows stay. Call inside
    the caller's transaction (with its audit row). Returns the items redacted."""
    message = "Redacted by the retention policy."
    with transaction.atomic():
        items = list(WorkItem.objects.filter(pk__in=ids, redacted_at__isnull=True,
                                             error__isnull=False).only("pk", "error"))
        _strip_messages(items, message)
        WorkItem.objects.bulk_update(items, ["error"])
        runs = list(StepRun.objects.filter(work_item_id__in=ids, error__isnull=False)
                    .only("pk", "error"))
        _strip_messages(runs, message)
        StepRun.objects.bulk_update(runs, ["error"])
        StepRun.objects.filter(work_item_id__in=ids).update(output=None, state={})
        return WorkItem.objects.filter(pk__in=ids, redacted_at__isnull=True).update(
            input=None, output=None, waiting_detail={}, redacted_at=now)
