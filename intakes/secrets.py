"""Callback signing secrets: Standard Webhooks format, encrypted at rest.

Signing needs the secret itself (not a hash), so it is stored encrypted with a Fernet key
derived from SECRET_KEY (SECRET_KEY_FALLBACKS still decrypt after a key rotation). The
plain secret exists only in memory and in the one answer that shows it.
"""

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks allows 24-64


def _fernet(key: str) -> Fernet:
    digest = hashlib.sha256(f"auxot.callback-signing-secret:{key}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _multi() -> MultiFernet:
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([_fernet(key) for key in keys])


def signing_secret_generate() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_encrypt(secret: str) -> str:
    return _multi().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _multi().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "the signing secret cannot be decrypted (SECRET_KEY changed?): rotate it") from None
