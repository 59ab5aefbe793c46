"""At-rest encryption for values Auxot must be able to read back (signing secrets, org secrets).

Fernet keyed from SECRET_KEY; SECRET_KEY_FALLBACKS still decrypt after a key rotation. Each
use names a purpose, so a token stored for one purpose never decrypts as another.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class DecryptionError(ValueError):
    """The token was written under a key this server no longer has (or was tampered with)."""


def _fernet(key: str, purpose: str) -> Fernet:
    digest = hashlib.sha256(f"auxot.{purpose}:{key}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _multi(purpose: str) -> MultiFernet:
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([_fernet(key, purpose) for key in keys])


def encrypt(plain: str, *, purpose: str) -> str:
    return _multi(purpose).encrypt(plain.encode()).decode()


def decrypt(token: str, *, purpose: str, ttl: int | None = None) -> str:
    """`ttl`: seconds since it was encrypted after which it no longer decrypts."""
    try:
        return _multi(purpose).decrypt(token.encode(), ttl=ttl).decode()
    except InvalidToken:
        raise DecryptionError(f"a stored {purpose} cannot be decrypted") from None
