"""Strict JSON request bodies: what the trigger accepts, and the 4xx for everything else.

Rules (documented in the README):
- `Content-Type: application/json` (or any `application/*+json`); a charset other than
  utf-8 is 415. No body at all is 400 `empty_body`: send `{}` for "no input".
- At most AUXOT_MAX_BODY_BYTES (413), whatever Content-Length claims. A chunked body
  (no Content-Length) is read when the server marks the input terminated (gunicorn sets
  `wsgi.input_terminated`), up to the limit + 1 byte; elsewhere it is 411.
- UTF-8 without a BOM.
- Standard JSON only: NaN/Infinity, duplicate object keys, numbers over 1,000 digits and
  nesting deeper than 64 levels are 400 `invalid_json`.
- Strings that cannot be stored: `\u0000` (PostgreSQL's jsonb refuses it) and unpaired
  UTF-16 surrogates such as `\ud800` (not Unicode text) are 422 `validation_failed`.
"""

import json
import math
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from auxot.errors import ApplicationError

MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 1000


class _Reject(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _Reject(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _Reject(f"duplicate key {key!r}")
        result[key] = value
    return result


def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _Reject(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    if not any(c in text for c in ".eE"):
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise _Reject(f"the number {text[:20]} is out of range")
    return value


def _unstorable_check(value: Any) -> None:
    """\\u0000 and lone surrogates are valid JSON escapes that no database column (jsonb,
    text) can store: refuse them as a 422, never a 5xx."""
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
                raise _Reject("strings may not contain \\u0000")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Reject("strings may not contain unpaired surrogates (\\ud800-\\udfff)") \
                    from None


def _depth_ok(text: str) -> bool:
    # Cheap pre-scan (strings skipped) so hostile nesting never reaches the recursive parser.
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


def _check_content_type(raw: str) -> None:
    media, _, params = (raw or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and
                                            media.endswith("+json")):
        raise ApplicationError(
            f"Send the body as JSON with 'Content-Type: application/json' (got {media or 'none'}).",
            code="unsupported_media_type",
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8", "utf8"
        }:
            raise ApplicationError("JSON bodies must be UTF-8.", code="unsupported_media_type")


def _is_chunked(meta: dict) -> bool:
    return ("chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
            and not meta.get("CONTENT_LENGTH"))


def _chunked_body(meta: dict, limit: int) -> bytes:
    # Django reads no body without Content-Length; the server already de-chunked it.
    if not meta.get("wsgi.input_terminated"):
        raise ApplicationError("Chunked bodies are not supported here; send Content-Length.",
                               code="length_required")
    return meta["wsgi.input"].read(limit + 1)


def _declared_length(meta: dict) -> int:
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApplicationError("Invalid Content-Length header.") from None


def _read(stream: IO[bytes] | None, meta: dict, limit: int) -> bytes:
    if _is_chunked(meta):
        return _chunked_body(meta, limit)
    return b"" if stream is None else stream.read(limit + 1)


def _decode(raw: bytes) -> str:
    if not raw:
        raise ApplicationError("The body is empty; send {} if the workflow needs no input.",
                               code="empty_body")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ApplicationError("The body starts with a UTF-8 byte order mark; remove it.",
                               code="invalid_json")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApplicationError(f"The body is not valid UTF-8 (byte {exc.start}).",
                               code="invalid_json") from None


def _loads(text: str) -> Any:
    if not _depth_ok(text):
        raise ApplicationError(f"JSON nested deeper than {MAX_DEPTH} levels.", code="invalid_json")
    try:
        value = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates,
                           parse_int=_number, parse_float=_number)
    except _Reject as exc:
        raise ApplicationError(f"Invalid JSON: {exc}.", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise ApplicationError(f"Invalid JSON: {exc}", code="invalid_json") from None
    if "\\u" in text:  # only \u escapes can smuggle these in; skip the walk otherwise
        try:
            _unstorable_check(value)
        except _Reject as exc:
            raise ApplicationError(f"The body cannot be stored: {exc}.",
                                   code="validation_failed") from None
    return value


class StrictJSONParser(BaseParser):
    """The rules above as DRF's parser (the default parser of every view): views read
    `request.data`, and every rule raises an ApplicationError with its 4xx code.

    It matches every content type on purpose: it checks the type itself, so a body sent as
    text/plain (or with no type) gets our 415 detail, not DRF's. DRF hands a request without
    a positive Content-Length to no parser (`request.data` is then `{}`): a view whose body
    is required reads it with `request_json`, which runs the same rules on it.
    """

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        meta = parser_context["request"].META
        limit = settings.AUXOT_MAX_BODY_BYTES
        too_big = ApplicationError(f"The body is larger than {limit} bytes.",
                                   code="payload_too_large")
        if _declared_length(meta) > limit:
            raise too_big
        _check_content_type(media_type if media_type is not None else meta.get("CONTENT_TYPE"))
        try:
            raw = _read(stream, meta, limit)
        except RequestDataTooBig:
            raise too_big from None
        if len(raw) > limit:
            raise too_big
        return _loads(_decode(raw))


def request_json(request: Request) -> Any:
    """The required JSON body: `request.data`, or, when DRF saw no body (no, an empty or a
    malformed Content-Length; chunked), the same parser on what there is, so that case gets
    its own 4xx (`empty_body`, 411, 400) or its chunked body is read."""
    if request.stream is not None:
        return request.data
    return StrictJSONParser().parse(None, request.content_type, {"request": request})
