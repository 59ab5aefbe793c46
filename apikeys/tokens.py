"""The token format: `<kind>.<lookup>.<secret><checksum>`.

- kind: `user` or `team`; lookup: 12 lowercase base32 characters (indexed, not secret);
- secret: 43 URL-safe base64 characters (256 random bits);
- checksum: 6 hex characters of CRC32 over everything before it, so a truncated or
  mistyped token is refused without a database lookup and secret scanners can
  recognise ours.
"""

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

TOKEN_RE = re.compile(r"^(user|team)\.([a-z2-7]{12})\.([A-Za-z0-9_-]{43})([0-9a-f]{6})$")
TOKEN_LENGTH = len("user.") + 12 + 1 + 43 + 6
# The start of a key and nothing wrong in it, only shorter: a copy that lost its end.
_TRUNCATED_RE = re.compile(r"^(user|team)\.(?:[a-z2-7]{0,12}|[a-z2-7]{12}\.[A-Za-z0-9_-]{0,48})$")


@dataclass(frozen=True)
class ParsedToken:
    kind: str
    lookup_id: str
    digest: str


def _checksum(body: str) -> str:
    return f"{binascii.crc32(body.encode()) & 0xFFFFFF:06x}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_generate(kind: str) -> str:
    lookup = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
    secret = secrets.token_urlsafe(32)
    body = f"{kind}.{lookup}.{secret}"
    return body + _checksum(body)


def token_shaped(token: str) -> bool:
    """Whether a token has a key's shape (its checksum unchecked)."""
    return TOKEN_RE.match(token) is not None


def token_truncated(token: str) -> bool:
    """Whether a token is the start of a key, cut short (`user.abc…` missing its end)."""
    return len(token) < TOKEN_LENGTH and _TRUNCATED_RE.match(token) is not None


def token_parse(token: str) -> ParsedToken | None:
    """Return the parts of a well-formed token, or None (malformed or bad checksum)."""
    match = TOKEN_RE.match(token)
    if not match:
        return None
    kind, lookup, secret, checksum = match.groups()
    body = f"{kind}.{lookup}.{secret}"
    if not secrets.compare_digest(_checksum(body), checksum):
        return None
    return ParsedToken(kind=kind, lookup_id=lookup, digest=token_digest(token))
