"""Contracts between steps: JSON Schemas for a workflow's input and each step's output.

A schema comes from an org admin and the value it checks from a caller (a trigger's body,
checked in the web process) or a tenant's server (a step's output, in a worker), so a check
is bounded like an expression (workflows/kinds/_shared.py): jsonschema has no limits of its
own. `uniqueItems` compared every pair of objects (4,000 of them: 30 s), `anyOf` branches
that fail re-check the whole subtree under each branch (time doubling per level), a `$ref`
loop never ends, and a `pattern` ran Python's backtracking `re` (`^(a|a)*$`: time doubling
per character, holding the GIL). Here: `uniqueItems` hashes each item once, every pattern
is matched by RE2 (linear time; a feature it lacks, a lookaround or a backreference, is
refused when the schema is saved), and one check runs at most SCHEMA_MAX_STEPS keywords and
builds at most SCHEMA_MAX_MESSAGE_CHARS of messages: past that the value is refused with a
violation that says so.
"""

import functools
import json
import re
import threading
from typing import Any

import jsonschema._keywords
import jsonschema._utils
import re2
from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation

from auxot.credentials import credential_formats_redacted, credential_kinds_named
from workflows.kinds.typed import typed_credentials, typed_credentials_redacted

MAX_VIOLATIONS = 50
VIOLATIONS_SCANNED = 1000  # found before they are sorted and cut to MAX_VIOLATIONS
VIOLATION_MESSAGE_MAX_CHARS = 500  # jsonschema quotes the value: a 1 MiB body, 50 times
SCHEMA_MAX_STEPS = 250_000  # keywords run (and `enum` entries compared) per check: ~1-4 s
SCHEMA_MAX_MESSAGE_CHARS = 10_000_000  # characters of messages one check may build
# ... and a schema's own size, as JSON: checking one against the metaschema when it is saved
# took 30 s for 1.5 MB (30,000 subschemas, in the admin's request), and a `$ref` to an
# anchor crawls the whole schema at every check (a second per trigger at that size).
SCHEMA_MAX_CHARS = 65_536


class _TooCostly(Exception):
    """A check went past the limits above."""


class _Uncheckable(Exception):
    """A pattern RE2 cannot match (a schema saved before patterns were checked)."""


_checks = threading.local()  # the running check's counters; None outside `violations`


@functools.lru_cache(maxsize=256)
def _re2_compiled(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is our answer, not a line on stderr
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return None


def pattern_problem(pattern: str) -> str | None:
    """Why RE2 cannot match `pattern` (in linear time), or None."""
    if _re2_compiled(pattern) is not None:
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"not a regular expression ({exc})"
    return ("uses a feature that cannot be matched in bounded time (a lookahead or "
            "lookbehind, a backreference, a possessive or atomic group, or a repetition "
            "over 1,000)")


class _PatternSearch:
    """jsonschema's keywords (`pattern`, `patternProperties`, `additionalProperties`,
    `unevaluatedProperties`) call their module's `re.search(pattern, text)`: inside a
    bounded check that is RE2; anywhere else (another library's use of jsonschema) `re`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    @staticmethod
    def search(pattern: str, string: str, flags: int = 0) -> Any:
        if getattr(_checks, "one", None) is None or flags:
            return re.search(pattern, string, flags)
        compiled = _re2_compiled(pattern)
        if compiled is None:
            raise _Uncheckable(pattern)
        return compiled.search(string)


for _module in (jsonschema._keywords, jsonschema._utils):
    _module.re = _PatternSearch()


def _charge(steps: int = 0, chars: int = 0) -> None:
    counters = _checks.one
    counters[0] += steps
    counters[1] += chars
    if counters[0] > SCHEMA_MAX_STEPS:
        raise _TooCostly(f"more than {SCHEMA_MAX_STEPS:,} steps")
    if counters[1] > SCHEMA_MAX_MESSAGE_CHARS:
        raise _TooCostly(f"more than {SCHEMA_MAX_MESSAGE_CHARS:,} characters of messages")


def _counted(keyword):
    def run(validator, value, instance, schema):
        _charge(1 + (len(value) if isinstance(value, list) else 0))  # `enum` scans its list
        for error in keyword(validator, value, instance, schema) or ():
            _charge(chars=len(error.message))
            yield error
    return run


def _item_key(value: Any) -> Any:
    """A hashable key equal for values JSON Schema calls equal (1 and 1.0; not true and 1;
    objects whatever their key order)."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_item_key(item) for item in value))
    if isinstance(value, dict):
        return ("d", frozenset((key, _item_key(item)) for key, item in value.items()))
    return ("o", id(value))


def _unique_items(validator, unique, instance, schema):
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set = set()
    for index, item in enumerate(instance):
        key = _item_key(item)
        if key in seen:
            yield SchemaViolation(f"has non-unique elements (item {index} repeats an earlier "
                                  "one)")
            return
        seen.add(key)


_BoundedValidator = validators.extend(Draft202012Validator, {
    name: _counted(_unique_items if name == "uniqueItems" else keyword)
    for name, keyword in Draft202012Validator.VALIDATORS.items()})


def schema_check(schema: Any, *, field: str) -> None:
    """Raise ValidationError unless `schema` is empty or a valid Draft 2020-12 schema."""
    if schema in (None, {}):
        return
    if not isinstance(schema, dict | bool):
        raise ValidationError({field: "A JSON Schema must be an object (or true/false)."})
    if problem := _schema_size_problem(schema):
        raise ValidationError({field: f"The schema {problem}."})
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = _pointer(list(exc.path)) or "/"
        raise ValidationError({field: f"Not a valid JSON Schema at {where}: {exc.message}"}) \
            from None
    problems = [f"The pattern at {where} {problem}: it is matched against what callers send."
                for where, pattern in _patterns(schema, [])
                if (problem := pattern_problem(pattern))]
    if problems:
        raise ValidationError({field: problems})


def _schema_size_problem(schema: Any) -> str | None:
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":"), default=str))
    if size <= SCHEMA_MAX_CHARS:
        return None
    return (f"is {size:,} characters as JSON, past {SCHEMA_MAX_CHARS:,}: checking it (and "
            "each value against it) costs in proportion")


_NOT_SCHEMAS = ("const", "default", "enum", "examples")  # values, whatever keys they hold


def _patterns(schema: Any, path: list) -> list[tuple[str, str]]:
    """(pointer, pattern) of every `pattern` and `patternProperties` key in `schema`."""
    found: list[tuple[str, str]] = []
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            found += _patterns(item, [*path, index])
    if not isinstance(schema, dict):
        return found
    if isinstance(schema.get("pattern"), str):
        found.append((_pointer([*path, "pattern"]), schema["pattern"]))
    if isinstance(schema.get("patternProperties"), dict):
        found += [(_pointer([*path, "patternProperties", key]), key)
                  for key in schema["patternProperties"]]
    for key, item in schema.items():
        if key not in _NOT_SCHEMAS:
            found += _patterns(item, [*path, key])
    return found


def schema_credentials_check(schema: Any, *, field: str) -> None:
    """Raise ValidationError if a string of `schema` (a `const`, `default`, `examples`,
    `enum` value, a description: anywhere) holds a credential known by its format. Checked
    when the schema is saved, never at run: an older one is shown with it REDACTED
    (`schema_shown`) and listed by `manage.py secrets_check`."""
    problems = [f"{path}: {credential_kinds_named(kinds)} typed into the JSON Schema is shown "
                "to everyone who may view the workflow (and a `const` or `enum` value to "
                "whoever sends input it refuses). A schema has no place for a credential: "
                "remove it."
                for path, kinds in typed_credentials(schema, field, expressions=False).items()]
    if problems:
        raise ValidationError({field: problems})


def schema_shown(schema: Any) -> Any:
    """A schema as shown to whoever may not change the workflow: credentials REDACTED."""
    return typed_credentials_redacted(schema, expressions=False)


def _escape(part: Any) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _pointer(path: list) -> str:
    return "".join(f"/{_escape(part)}" for part in path)


def violations(instance: Any, schema: Any) -> list[dict[str, str]]:
    """Every violation as {"pointer", "message"}, in document order.

    A missing required property is reported at its own pointer (/customer), not at its
    parent, so "output missing /customer" names the field a caller must add.
    """
    if schema in (None, {}):
        return []
    if problem := _schema_size_problem(schema):
        return [{"pointer": "/", "message": f"the schema {problem} (saved before that limit): "
                                            "refused unchecked; save a smaller schema"}]
    found: list[dict[str, str]] = []
    stopped = None
    _checks.one = [0, 0]
    try:
        for error in _BoundedValidator(schema).iter_errors(instance):
            _violation_add(found, error)
            if len(found) >= VIOLATIONS_SCANNED:
                break
    except _TooCostly as exc:
        stopped = (f"checking stopped: the value is too costly to check against this "
                   f"schema ({exc}); it is refused unchecked")
    except _Uncheckable as exc:
        stopped = (f"the schema's pattern {str(exc)[:100]!r} "
                   f"{pattern_problem(str(exc))}; save the schema again without it")
    except RecursionError:
        stopped = "the schema refers to itself without end (a $ref loop) or nests too deep"
    finally:
        _checks.one = None
    found.sort(key=lambda v: v["pointer"])
    found = found[:MAX_VIOLATIONS - 1 if stopped else MAX_VIOLATIONS]
    if stopped:
        found.append({"pointer": "/", "message": stopped})
    # jsonschema quotes the schema (`const`, `enum`) and the value: a credential typed
    # into an older schema (or sent by the caller) is not repeated, nor a value whole.
    for v in found:
        message = credential_formats_redacted(v["message"][:4 * VIOLATION_MESSAGE_MAX_CHARS])
        if len(message) > VIOLATION_MESSAGE_MAX_CHARS:
            message = message[:VIOLATION_MESSAGE_MAX_CHARS] + "… (cut)"
        v["message"] = message
    return found


def _violation_add(found: list[dict[str, str]], error: SchemaViolation) -> None:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = [name for name in error.validator_value
                   if isinstance(error.instance, dict) and name not in error.instance]
        found.extend({"pointer": _pointer([*path, name]), "message": "is missing"}
                     for name in missing)
        return
    found.append({"pointer": _pointer(path) or "/", "message": error.message})


def pointer_value(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer ("/a/0/b", as `violations` writes them), or None."""
    value = document
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdecimal() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def describe(found: list[dict[str, str]]) -> str:
    """One phrase: 'missing /customer' or '/age: -1 is less than the minimum of 0'."""
    parts = []
    for v in found[:3]:
        if v["message"] == "is missing":
            parts.append(f"missing {v['pointer']}")
        else:
            parts.append(f"{v['pointer']}: {v['message']}")
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return "; ".join(parts) + more
