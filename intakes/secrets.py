"""Callback signing secrets: Standard Webhooks format, encrypted at rest.

Signing needs the secret itself (not a hash), so it is stored encrypted (`auxot.crypto`).
The plain secret exists only in memory and in the one answer that shows it.
"""

import base64
import secrets

from auxot import crypto

PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks allows 24-64
PURPOSE = "callback-signing-secret"  # the key label existing rows were encrypted under


def signing_secret_generate() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_encrypt(secret: str) -> str:
    return crypto.encrypt(secret, purpose=PURPOSE)


def secret_decrypt(token: str) -> str:
    try:
        return crypto.decrypt(token, purpose=PURPOSE)
    except crypto.DecryptionError:
        raise ValueError(
            "the signing secret cannot be decrypted (SECRET_KEY changed?): rotate it") from None
