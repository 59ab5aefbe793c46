"""Contracts between steps: JSON Schemas for a workflow's input and each step's output."""

from typing import Any

from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from auxot.credentials import credential_formats_redacted, credential_kinds_named
from workflows.kinds.typed import typed_credentials, typed_credentials_redacted

MAX_VIOLATIONS = 50


def schema_check(schema: Any, *, field: str) -> None:
    """Raise ValidationError unless `schema` is empty or a valid Draft 2020-12 schema."""
    if schema in (None, {}):
        return
    if not isinstance(schema, dict | bool):
        raise ValidationError({field: "A JSON Schema must be an object (or true/false)."})
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = _pointer(list(exc.path)) or "/"
        raise ValidationError({field: f"Not a valid JSON Schema at {where}: {exc.message}"}) \
            from None


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
    found = []
    validator = Draft202012Validator(schema)
    for error in validator.iter_errors(instance):
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = [name for name in error.validator_value
                       if isinstance(error.instance, dict) and name not in error.instance]
            for name in missing:
                found.append({"pointer": _pointer([*path, name]), "message": "is missing"})
            continue
        # jsonschema quotes the schema (`const`, `enum`) and the value: a credential typed
        # into an older schema (or sent by the caller) is not repeated.
        found.append({"pointer": _pointer(path) or "/",
                      "message": credential_formats_redacted(error.message)})
    found.sort(key=lambda v: v["pointer"])
    return found[:MAX_VIOLATIONS]


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
