"""Strict JSON request bodies: what the trigger accepts, and the 4xx for everything else.

Rules (documented in the README):
- `Content-Type: application/json` (or any `application/*+json`); a charset other than
  utf-8 is 415. No body at all is 400 `empty_body`: send `{}` for "no input".
- No `Content-Encoding` (or `identity`): a compressed body is 415 with
  `Accept-Encoding: identity` (RFC 7694), never decoded as if it were plain JSON (a gzip
  body was a misleading "not valid UTF-8", and a plain body labelled gzip was accepted).
- At most AUXOT_MAX_BODY_BYTES (413), whatever Content-Length claims. A chunked body
  (no Content-Length) is read when the server marks the input terminated (gunicorn sets
  `wsgi.input_terminated`), up to the limit + 1 byte; elsewhere it is 411.
- UTF-8 without a BOM.
- Standard JSON only: NaN/Infinity, duplicate object keys, numbers over 1,000 digits and
  nesting deeper than 64 levels are 400 `invalid_json`.
- Strings that cannot be stored: `\u0000` (PostgreSQL's jsonb refuses it) and unpaired
  UTF-16 surrogates such as `\ud800` (not Unicode text) are 422 `validation_failed`.

The last two rules, but for duplicate keys, are the ones every JSON from outside meets
(auxot/storable.py): servers' answers to `http` and `agent` steps too.
"""

from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from auxot.errors import ApplicationError
from auxot.storable import NotJSON, Unstorable, json_loads


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise NotJSON(f"duplicate key {key!r}")
        result[key] = value
    return result


def _check_content_type(raw: str) -> None:
    media, _, params = (raw or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and
                                            media.endswith("+json")):
        hint = (" curl -d sends that unless you add -H 'Content-Type: application/json'."
                if media == "application/x-www-form-urlencoded" else "")
        raise ApplicationError(
            f"Send the body as JSON with 'Content-Type: application/json' (got {media or 'none'})."
            f"{hint}", code="unsupported_media_type")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8", "utf8"
        }:
            raise ApplicationError("JSON bodies must be UTF-8.", code="unsupported_media_type")


def _check_content_encoding(meta: dict) -> None:
    codings = [c.strip().lower() for c in meta.get("HTTP_CONTENT_ENCODING", "").split(",")]
    if any(c not in ("", "identity") for c in codings):
        shown = meta["HTTP_CONTENT_ENCODING"].strip()[:40]
        raise ApplicationError(
            f"Content-Encoding {shown!r} is not supported: send the JSON body uncompressed.",
            code="unsupported_media_type", headers={"Accept-Encoding": "identity"})


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
    """The body's value under the shared storable-JSON rule (auxot/storable.py), plus the
    caller's own: no duplicate keys."""
    try:
        return json_loads(text, object_pairs_hook=_no_duplicates)
    except NotJSON as exc:
        raise ApplicationError(f"Invalid JSON: {exc}.", code="invalid_json") from None
    except Unstorable as exc:
        raise ApplicationError(f"The body cannot be stored: {exc}.",
                               code="validation_failed") from None


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
        _check_content_encoding(meta)
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
