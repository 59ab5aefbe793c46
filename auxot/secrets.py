"""Per-organization secrets: written by admins, resolved by the engine, bound to hosts.

A step or provider names a secret (`{"secret": "NAME"}`); it never reaches the server's
environment or settings. The one exception is the operator's: AUXOT_OPERATOR_SECRETS may
grant an organization named environment variables (`{"env": "NAME"}`), read from the
worker's environment only. Values never go into errors, audit extras or logs.
"""

import os
import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from auxot import crypto
from auxot.credentials import free_text_refusal
from auxot.errors import ApplicationError
from auxot.hosts import host_allowed, host_patterns_normalize, url_host
from auxot.models import Organization, Secret
from auxot.services import audit_record

PURPOSE = "org-secret"
MAX_VALUE = 8192
MAX_PREFIX = 100
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
HOW_TO_FIX = 'create an organization secret in the admin (Secrets) and reference it as ' \
             '{"secret": "<name>"}'


# Header and field names whose value is a credential (`Authorization`, `X-Api-Key`,
# `X-Auth-Token`, `Cookie`, `client_secret`, `password`, `X-Hub-Signature`). A value typed
# for one into a step's configuration is shown to everyone who may view the workflow
# (members, auditors): it belongs in an organization secret.
_CREDENTIAL_WORDS = re.compile(
    r"auth|token|secret|key|passw|pwd|session|signature|credential|cookie", re.IGNORECASE)
_NOT_CREDENTIALS = frozenset({"idempotency-key"})  # a retry's id, not a credential
# Authentication scheme names (the IANA registry's, and common ones): a literal that is only
# one of these (`'Bearer '` joined to a caller's token) says how, not what.
AUTH_SCHEMES = frozenset({"basic", "bearer", "digest", "hoba", "mutual", "negotiate", "ntlm",
                          "oauth", "scram-sha-1", "scram-sha-256", "vapid", "token", "apikey",
                          "api-key", "key", "aws4-hmac-sha256"})
CREDENTIAL_SHOWN_BELOW = 4  # shorter constants hold no credential (separators, `v1`)


def credential_named(name: Any) -> bool:
    """Whether a header or a JSON field of this name carries a credential."""
    return isinstance(name, str) and name.lower() not in _NOT_CREDENTIALS and bool(
        _CREDENTIAL_WORDS.search(name))


def credential_literal(value: Any) -> bool:
    """Whether a constant typed into configuration could be a credential: a string or a
    number of at least CREDENTIAL_SHOWN_BELOW characters that is not just the name of an
    authentication scheme."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    text = str(value).strip().rstrip(":=").strip()
    return len(text) >= CREDENTIAL_SHOWN_BELOW and text.lower() not in AUTH_SCHEMES


def prefix_holds_credential(prefix: Any) -> bool:
    """Whether a reference's `prefix` holds more than the words before a secret (`Bearer `,
    `token=`, `Klaviyo-API-Key `): a word of 4 characters or more with a digit in it, or
    one over 32 characters, is taken for a credential typed in beside the secret."""
    if not isinstance(prefix, str):
        return False
    return any(len(word) >= CREDENTIAL_SHOWN_BELOW and word.lower() not in AUTH_SCHEMES and (
        any(char.isdigit() for char in word) or len(word) > 32)
        for word in re.split(r"[\s=:;,\"']+", prefix))


def credential_parts(value: str) -> tuple[str, ...]:
    """What a credential header's value hides: the value, and without its scheme word
    (`Bearer <token>`: the token alone, as a receiver may quote it)."""
    scheme, _, rest = value.strip().partition(" ")
    parts = {value, rest.strip()} if scheme.lower() in AUTH_SCHEMES else {value}
    return tuple(part for part in parts if credential_literal(part))


def free_text_check(value: Any, field: str) -> None:
    """`free_text_refusal` as a 422 problem, for the services the admin forms, the API and
    the shell commands share."""
    if message := free_text_refusal(value, field):
        raise ApplicationError(message, code="validation_failed")


class SecretUnavailable(Exception):
    """A reference that cannot be sent; `code` is the step's failure code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- validation (shared by the services and the admin form) ------------------------------
def secret_value_check(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("Enter the secret's value.")
    if len(value) > MAX_VALUE:
        raise ValidationError(f"At most {MAX_VALUE} characters.")
    if not value.isprintable():
        # A header value cannot carry control characters (CR/LF would split the header).
        raise ValidationError("The value may not contain line breaks or control characters.")
    return value


def secret_hosts_check(hosts: Any) -> list[str]:
    try:
        return host_patterns_normalize(hosts)
    except ValueError as exc:
        raise ValidationError(f"Allowed hosts: {exc}.") from None


def _checked(check, value):
    try:
        return check(value)
    except ValidationError as exc:
        raise ApplicationError("; ".join(exc.messages), code="validation_failed") from None


# --- services ------------------------------------------------------------------------------
def _audit(event: str, secret: Secret, actor: Any, ip: str | None, now: datetime,
           **extra: Any) -> None:
    audit_record(event=event, org=secret.org, actor_user=actor, obj=secret, ip=ip, now=now,
                 extra={"name": secret.name, **extra})


def secret_create(*, org: Organization, name: str, value: str, allowed_hosts: list[str],
                  actor: Any = None, ip: str | None = None) -> Secret:
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise ApplicationError(f"{name!r} is not a secret name (a letter, then letters, "
                               "digits, '_', '.' or '-').", code="validation_failed")
    value = _checked(secret_value_check, value)
    hosts = _checked(secret_hosts_check, allowed_hosts)
    now = timezone.now()
    try:
        with transaction.atomic():
            secret = Secret.objects.create(
                org=org, name=name, value_encrypted=crypto.encrypt(value, purpose=PURPOSE),
                allowed_hosts=hosts, created_by=actor if getattr(actor, "pk", None) else None,
                created_at=now)
            _audit("secret.created", secret, actor, ip, now, allowed_hosts=hosts)
    except IntegrityError:
        raise ApplicationError(f"{org.name} already has a secret named {name}.",
                               code="conflict") from None
    return secret


def secret_rotate(*, secret: Secret, value: str, actor: Any = None,
                  ip: str | None = None) -> Secret:
    value = _checked(secret_value_check, value)
    now = timezone.now()
    with transaction.atomic():
        secret.value_encrypted = crypto.encrypt(value, purpose=PURPOSE)
        secret.rotated_at = now
        secret.save(update_fields=["value_encrypted", "rotated_at"])
        _audit("secret.rotated", secret, actor, ip, now)
    return secret


def secret_update_hosts(*, secret: Secret, allowed_hosts: list[str], actor: Any = None,
                        ip: str | None = None) -> Secret:
    hosts = _checked(secret_hosts_check, allowed_hosts)
    now = timezone.now()
    with transaction.atomic():
        before = list(secret.allowed_hosts)
        secret.allowed_hosts = hosts
        secret.save(update_fields=["allowed_hosts"])
        _audit("secret.hosts_changed", secret, actor, ip, now, before=before, allowed_hosts=hosts)
    return secret


def secret_delete(*, secret: Secret, actor: Any = None, ip: str | None = None) -> None:
    now = timezone.now()
    with transaction.atomic():
        _audit("secret.deleted", secret, actor, ip, now, allowed_hosts=secret.allowed_hosts)
        secret.delete()


# --- references ------------------------------------------------------------------------------
def reference_parse(ref: Any) -> tuple[str, str, str]:
    """("secret" | "env", name, prefix) for a well-formed reference, else ValueError."""
    if not isinstance(ref, dict) or len({"secret", "env"} & set(ref)) != 1:
        raise ValueError('must be {"secret": "<name>"} (an organization secret), '
                         'optionally with "prefix"')
    if set(ref) - {"secret", "env", "prefix"}:
        raise ValueError('only "secret" (or "env") and "prefix" are allowed')
    kind = "secret" if "secret" in ref else "env"
    name = ref[kind]
    pattern = SECRET_NAME if kind == "secret" else ENV_NAME
    if not isinstance(name, str) or not pattern.match(name):
        raise ValueError(f"{name!r} is not a valid {kind} name")
    prefix = ref.get("prefix", "")
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX or not prefix.isprintable():
        raise ValueError(f"prefix must be a string of at most {MAX_PREFIX} printable characters")
    return kind, name, prefix


def _org_grants(org_id: Any) -> dict[str, list[str] | None]:
    grants = settings.AUXOT_OPERATOR_SECRETS
    if not grants:
        return {}
    slug = Organization.objects.filter(pk=org_id).values_list("slug", flat=True).first()
    return grants.get(slug, {}) if slug else {}


def _not_granted(name: str) -> SecretUnavailable:
    return SecretUnavailable("secret_not_allowed", (
        f'The reference {{"env": "{name}"}} is not allowed: steps and providers cannot read '
        f"the server's environment or settings. To send this value, {HOW_TO_FIX}."))


def _refuse_host(what: str, url: str, hosts: list[str] | None) -> None:
    if hosts is None:
        return
    host = url_host(url)
    if host is None:
        raise SecretUnavailable("secret_host_refused", (
            f"{what} was not sent: the request URL's host cannot be determined safely "
            "(user info, backslashes or an unparseable host)."))
    if not host_allowed(host, hosts):
        raise SecretUnavailable("secret_host_refused", (
            f"{what} may not be sent to host {host}; it is allowed for: {', '.join(hosts)}."))


def _org_secret(org_id: Any, name: str) -> Secret:
    secret = Secret.objects.filter(org_id=org_id, name=name).first()
    if secret is None:
        raise SecretUnavailable("missing_secret", (
            f"This organization has no secret named {name}; create it in the admin (Secrets)."))
    return secret


def _decrypted(secret: Secret) -> str:
    try:
        return crypto.decrypt(secret.value_encrypted, purpose=PURPOSE)
    except crypto.DecryptionError:
        raise SecretUnavailable("missing_secret", (
            f"Secret {secret.name} cannot be decrypted (SECRET_KEY changed without keeping the "
            "old key in SECRET_KEY_FALLBACKS?): enter its value again in the admin.")) from None


def _granted_hosts(org_id: Any, name: str) -> list[str] | None:
    grants = _org_grants(org_id)
    if name not in grants:
        raise _not_granted(name)
    return grants[name]


def _environ(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SecretUnavailable("missing_secret", (
            f"Environment variable {name} (granted by the operator) is not set on the worker."))
    return value


def secret_resolve(*, org_id: Any, name: str, url: str) -> str:
    """The org secret's value, if `url`'s host is one it is bound to; else SecretUnavailable."""
    secret = _org_secret(org_id, name)
    _refuse_host(f"Secret {name}", url, secret.allowed_hosts)
    return _decrypted(secret)


def operator_secret_resolve(*, org_id: Any, name: str, url: str) -> str:
    """A granted environment variable, read from this process's environment only."""
    _refuse_host(f"Environment variable {name}", url, _granted_hosts(org_id, name))
    return _environ(name)


def reference_resolve(*, org_id: Any, ref: Any, url: str) -> str:
    """prefix + value for a step's or provider's reference about to be sent to `url`."""
    try:
        kind, name, prefix = reference_parse(ref)
    except ValueError as exc:
        raise SecretUnavailable("bad_config", f"Secret reference {exc}.") from None
    resolve = secret_resolve if kind == "secret" else operator_secret_resolve
    return prefix + resolve(org_id=org_id, name=name, url=url)


def url_reference_resolve(*, org_id: Any, ref: Any) -> str:
    """The URL an `http` step's `url_secret` names: the secret's value, which must be an
    absolute http(s) URL whose own host the secret is bound to (its allowed hosts, or the
    operator's grant). A chat webhook's URL is its credential; this keeps it out of the
    step's configuration, which the organization's viewers can read."""
    try:
        kind, name, prefix = reference_parse(ref)
    except ValueError as exc:
        raise SecretUnavailable("bad_config", f"url_secret {exc}.") from None
    if prefix:
        raise SecretUnavailable("bad_config", 'url_secret takes no "prefix".')
    if kind == "secret":
        secret = _org_secret(org_id, name)
        what, hosts, value = f"Secret {name}", secret.allowed_hosts, _decrypted(secret)
    else:
        what, hosts = f"Environment variable {name}", _granted_hosts(org_id, name)
        value = _environ(name)
    if not value.startswith(("http://", "https://")):
        raise SecretUnavailable("bad_request", f"{what} does not hold an absolute http(s) URL.")
    _refuse_host(what, value, hosts)
    return value


def reference_problem(*, org_id: Any, ref: Any, url: str | None = None,
                      env_must_be_set: bool = False) -> str | None:
    """Why `ref` would not resolve (checked when config is saved, and by secrets_check).

    With a static `url`, host binding is checked too; values are never decrypted here.
    """
    try:
        kind, name, _ = reference_parse(ref)
    except ValueError as exc:
        return str(exc)
    if kind == "env":
        grants = _org_grants(org_id)
        if name not in grants:
            return _not_granted(name).message
        hosts = grants[name]
        if env_must_be_set and not os.environ.get(name):
            return f"environment variable {name} is granted but not set in this environment"
    else:
        hosts = Secret.objects.filter(org_id=org_id, name=name).values_list(
            "allowed_hosts", flat=True).first()
        if hosts is None:
            return f"this organization has no secret named {name}; create it in the admin " \
                   "(Secrets) first"
    if url is not None:
        try:
            _refuse_host(f"{kind} {name}", url, hosts)
        except SecretUnavailable as exc:
            return exc.message
    return None
