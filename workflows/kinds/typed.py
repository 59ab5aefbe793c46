"""What an admin typed into a step's configuration (or a JSON Schema), as opposed to what
it reads from the data: the constants of an expression, and credentials found by their
format in any string of it (auxot/credentials.py: `credential_formats`).

Every step kind refuses such a credential when the step is saved (`StepKind.validate_stored`)
and shows it REDACTED to whoever may not change the workflow (`StepKind.config_shown`); an
older step keeps running with it (checked at save, never at run), except one holding an
Auxot API key, which an `http` or `agent` step will not send (`auxot_key_failure`).
"""

import re
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from auxot.credentials import credential_formats, credential_formats_redacted

# An agent's `{{ <jmespath> }}` placeholders (workflows/kinds/agent.py renders them), as
# this pattern defines them. It is never run: from every `{{` it looked for the closing
# braces again, so a prompt of 20,000 `{{` took 20 s (a megabyte, hours), in the admin's
# save, in every run and in the credential scan of every string of every step.
TEMPLATE_FIELD = re.compile(r"\{\{\s*(.+?)\s*\}\}")


def template_fields(text: str) -> list[tuple[int, int, str]]:
    """(start, end, expression) of each placeholder TEMPLATE_FIELD would find, in time
    linear in `text`: the first `}}` after a `{{` (at least one character between) closes
    it, unless what lies between, less the spaces around it, holds a line break (then the
    next `{{` is tried)."""
    found: list[tuple[int, int, str]] = []
    start, close, last_break = text.find("{{"), -1, -1
    while start >= 0:
        if close < start + 3:  # the first `}}` a placeholder from here could end at
            close = text.find("}}", start + 3)
            if close < 0:
                break
            trimmed = close
            while trimmed > start + 2 and text[trimmed - 1].isspace():
                trimmed -= 1
            last_break = text.rfind("\n", start + 2, trimmed)
        inner = start + 2
        while inner < close and text[inner].isspace():
            inner += 1
        if inner == close:  # only spaces between: as the pattern backtracks
            end, body = _blank_field(text, start + 2, close)
        else:  # sliced only when it holds no line break: never once per `{{`
            end, body = close + 2, text[inner:trimmed] if last_break < inner else ""
        if body and "\n" not in body:
            found.append((start, end, body))
            start = text.find("{{", end)
        else:
            start = text.find("{{", start + 1)
    return found


def _blank_field(text: str, inner: int, close: int) -> tuple[int, str]:
    """(end, expression) of `{{ }}` (spaces from `inner` to `close`): the pattern's
    expression then starts at the braces (up to the next `}}`), else it is the last space
    before them that is not a line break; none: ""."""
    after = text.find("}}", close + 1)
    if after >= 0 and "\n" not in (body := text[close:after].rstrip()):
        return after + 2, body
    spaces = text[inner:close].replace("\n", "")
    return close + 2, spaces[-1:]
AUXOT_KEY = "Auxot API key"


def expression_literals(expression: str) -> list[tuple[str | None, Any]]:
    """The constants a (valid) expression holds, `'text'` and each leaf of a `` `json` ``,
    each with the name it sits under (a multi-select hash's key, a JSON object's key) or
    None: what an admin typed into it, as opposed to what it reads from the data."""
    found: list[tuple[str | None, Any]] = []

    def leaves(value: Any, name: str | None) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                leaves(item, key)
        elif isinstance(value, list):
            for item in value:
                leaves(item, name)
        else:
            found.append((name, value))

    def walk(node: dict, name: str | None) -> None:
        if node.get("type") == "literal":
            leaves(node.get("value"), name)
        if node.get("type") == "key_val_pair":
            name = node.get("value")
        for child in node.get("children", []):
            if isinstance(child, dict):
                walk(child, name)

    walk(jmespath.compile(expression).parsed, None)
    return found


def _decoded_constants(text: str) -> list[str]:
    """The string constants of `text` taken as a jmespath expression, and of each `{{ }}`
    placeholder in it, as jmespath decodes them (`` `"\\u0067hp_…"` `` is `ghp_…`): a text
    that is no expression has none."""
    constants = []
    for expression in (text, *(field for _, _, field in template_fields(text))):
        try:
            literals = expression_literals(expression)
        except (JMESPathError, TypeError, ValueError, RecursionError):
            continue
        constants += [value for _, value in literals if isinstance(value, str)]
    return constants


def _string_kinds(text: str, expressions: bool) -> tuple[list[str], bool]:
    """(credential kinds in `text`, whether its raw text shows them all)."""
    kinds = credential_formats(text)
    decoded = [kind for constant in (_decoded_constants(text) if expressions else ())
               for kind in credential_formats(constant)]
    return list(dict.fromkeys(kinds + decoded)), set(decoded) <= set(kinds)


def _item_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def typed_credentials(value: Any, path: str = "", *, expressions: bool = True
                      ) -> dict[str, list[str]]:
    """{path: [credential kinds]} for every string in `value` (a step's config, a JSON
    Schema: values and keys, at any depth) that holds a credential by its format, and, with
    `expressions`, for every string that is a jmespath expression (or holds `{{ }}`
    placeholders) whose constants do once decoded. A path is dotted (`headers.X-Token`,
    `input_schema.properties.code.const`), `[i]` for a list's item; a key that holds one is
    named by its parent's path and `(a key)`, never by itself."""
    found: dict[str, list[str]] = {}

    def walk(item: Any, where: str) -> None:
        if isinstance(item, str):
            if kinds := _string_kinds(item, expressions)[0]:
                found.setdefault(where or "(the value)", []).extend(kinds)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and credential_formats(key):
                    found.setdefault(f"{where or '(the value)'} (a key)", []).extend(
                        credential_formats(key))
                    walk(inner, f"{where}.(a key)" if where else "(a key)")
                else:
                    walk(inner, _item_path(where, key))
        elif isinstance(item, list):
            for index, inner in enumerate(item):
                walk(inner, f"{where}[{index}]")

    walk(value, path)
    return {where: list(dict.fromkeys(kinds)) for where, kinds in found.items()}


def typed_credentials_redacted(value: Any, *, expressions: bool = True) -> Any:
    """`value` with every credential `typed_credentials` finds REDACTED: in the text, with
    the rest of its word (`'Bearer REDACTED'`, a prompt's sentence around it kept); a string
    whose constants hold one only once decoded, whole; a key that holds one, as REDACTED
    (numbered, should two of one object hold one)."""
    if isinstance(value, str):
        kinds, shown_raw = _string_kinds(value, expressions)
        if not kinds:
            return value
        return credential_formats_redacted(value) if shown_raw else "REDACTED"
    if isinstance(value, dict):
        shown: dict = {}
        for key, item in value.items():
            if isinstance(key, str) and credential_formats(key):
                key = "REDACTED" if "REDACTED" not in shown else f"REDACTED {len(shown)}"
            shown[key] = typed_credentials_redacted(item, expressions=expressions)
        return shown
    if isinstance(value, list):
        return [typed_credentials_redacted(item, expressions=expressions) for item in value]
    return value
