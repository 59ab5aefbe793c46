"""What the database can store, for JSON and text that come from outside: one rule for a
caller's body (intakes/body.py) and for the answers of servers a tenant chose (`http` steps,
agent providers).

Python accepts values PostgreSQL refuses: `\\u0000` in a jsonb string or key and NUL in
text; unpaired UTF-16 surrogates such as `\\ud800` (not Unicode text: psycopg cannot encode
them); NaN and Infinity (not JSON: jsonb refuses them). Python itself cannot write back
nesting deeper than its recursion limit. A value that cannot be stored is a work item or a
step result that cannot be recorded, so every such value is dealt with before it is kept:

- `json_loads`: standard JSON within limits (no NaN/Infinity, numbers of at most 1,000
  digits and in a float's range, nesting up to 64 levels), else `NotJSON`; valid JSON whose
  strings or keys hold `\\u0000` or unpaired surrogates is `Unstorable`. Each caller picks
  what that means (a 4xx for a caller's body, `text` for an `http` step's answer).
- `text_decode` / `text_storable`: text as it can be stored: bytes that do not decode,
  NUL and unpaired surrogates become U+FFFD.
- `value_problem`: why a value computed here (a step's output) cannot be stored, within a
  size: measured part by part first, each shared part once, so a value that shares its
  parts (a transform's `[@, @]`, nested) is refused at the limit, never written out whole.
"""

import codecs
import json
import math
import re
from typing import Any

MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 1000
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, a surrogate is always an unpaired one
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # \u0000, or a surrogate's escape


def _surrogates(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


class NotJSON(ValueError):
    """Not standard JSON, or beyond the limits above."""


class Unstorable(ValueError):
    """Valid JSON holding strings no database column stores."""


def _no_constants(name: str) -> Any:
    raise NotJSON(f"{name} is not valid JSON")


def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise NotJSON(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    if not any(c in text for c in ".eE"):
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise NotJSON(f"the number {text[:20]} is out of range")
    return value


def _depth_ok(text: str) -> bool:
    # Cheap pre-scan (strings skipped) so hostile nesting never reaches the recursive parser.
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # a long string in a small document
        return True
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _strings_check(value: Any) -> None:
    """Raise Unstorable if a string or key holds NUL or an unpaired surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise Unstorable("strings may not contain \\u0000")
            if _surrogates(item):
                raise Unstorable("strings may not contain unpaired surrogates (\\ud800-\\udfff)")


def json_loads(text: str, *, object_pairs_hook=None) -> Any:
    """`text` parsed as JSON the database stores exactly as sent; NotJSON or Unstorable if
    not. `object_pairs_hook` adds a caller's own rule (it raises NotJSON to refuse)."""
    if not _depth_ok(text):
        raise NotJSON(f"nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_int=_number,
                           parse_float=_number, object_pairs_hook=object_pairs_hook)
    except NotJSON:
        raise
    except (ValueError, RecursionError) as exc:
        raise NotJSON(str(exc)) from None
    # Only these escapes (or a surrogate already in the text) can smuggle them in: skip the
    # walk otherwise. A raw NUL is a control character the parser refuses.
    if _RISKY_ESCAPE.search(text) or _surrogates(text):
        _strings_check(value)
    return value


def text_storable(text: str) -> str:
    """`text` with NUL and unpaired surrogates replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    return _SURROGATE.sub(REPLACEMENT, text) if _surrogates(text) else text


_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped "\\"


class _TooLarge(Exception):
    pass


def _json_size(value: Any, memo: dict, limit: int) -> int:
    """The length of `value` written as compact JSON, or _TooLarge past `limit`. A part shared
    many times over (a transform's nested `[@, @]`) is measured once: the cost follows the
    distinct parts, not the size they would be written out at."""
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, str):
        size = len(json.dumps(value, ensure_ascii=False))
    elif value is None or isinstance(value, bool):
        size = 5 if value is False else 4
    elif isinstance(value, int):
        size = len(str(value))  # ValueError past Python's digit limit
    elif isinstance(value, float):
        size = len(json.dumps(value, allow_nan=False))  # ValueError for NaN and Infinity
    elif isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        size = 1
        for name, item in items:
            if name is not None:  # a key: JSON writes it as a string
                size += _json_size(name if isinstance(name, str) else str(name), memo,
                                   limit) + 1
            size += _json_size(item, memo, limit) + 1
            if size > limit:
                raise _TooLarge
        size = max(size, 2)
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    if size > limit:
        raise _TooLarge
    memo[key] = size
    return size


def _text_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"is larger than {limit:,} characters as JSON"
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        return "holds \\u0000, which the database does not store"
    if _surrogates(text):
        return "holds an unpaired surrogate (\\ud800-\\udfff), which is not text"
    return None


def _encode_problem(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "is nested too deeply to write as JSON"
    if isinstance(exc, TypeError):
        return f"is not JSON ({exc})"
    if "Out of range float" in str(exc):
        return "holds NaN or Infinity, which are not JSON"
    return f"cannot be written as JSON ({exc})"


def value_check(value: Any, *, limit: int) -> tuple[str | None, int]:
    """(why `value` cannot be stored as JSON of at most `limit` characters, or None; its
    length written as compact JSON, 0 when it cannot be written). It is measured first (each
    shared part once), and written (in C) only within the limit."""
    try:
        _json_size(value, {}, limit)
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except _TooLarge:
        return f"is larger than {limit:,} characters as JSON", 0
    except (ValueError, TypeError, RecursionError) as exc:
        return _encode_problem(exc), 0
    return _text_problem(text, limit), len(text)


def value_problem(value: Any, *, limit: int) -> str | None:
    """Why `value` cannot be stored as JSON of at most `limit` characters, or None."""
    return value_check(value, limit=limit)[0]


# Decoders written in Python that take time quadratic in the answer's length: a server's
# declared charset never picks one (UTF-8 instead).
_SLOW_CODECS = frozenset({"punycode", "idna"})


def text_decode(raw: bytes, charset: str | None = None) -> str:
    """`raw` as storable text: decoded with `charset` (UTF-8 when none is given or Python
    has no text codec by that name), bytes that do not decode replaced by U+FFFD."""
    try:
        if charset and codecs.lookup(charset).name in _SLOW_CODECS:
            charset = None
        text = raw.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError):  # an unknown charset, or one that is no text codec
        text = raw.decode("utf-8", errors="replace")
    return text_storable(text)
