"""Auxot's callers' client: trigger an intake, wait for its work item, verify a callback.

    from auxot_client import Client, WaitTimeout

Depends on `requests` only (never Django); `callback_verify` needs the `callbacks` extra.
"""

from auxot_client._version import VERSION as __version__
from auxot_client.client import (
    AuthError,
    AuxotError,
    Backoff,
    CallbackVerificationError,
    Client,
    ConfigError,
    NotFoundError,
    Poll,
    RequestError,
    TransientError,
    WaitTimeout,
    callback_verify,
)

__all__ = [
    "AuthError",
    "AuxotError",
    "Backoff",
    "CallbackVerificationError",
    "Client",
    "ConfigError",
    "NotFoundError",
    "Poll",
    "RequestError",
    "TransientError",
    "WaitTimeout",
    "__version__",
    "callback_verify",
]
