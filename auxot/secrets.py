"""Per-organization secrets: written by admins, resolved by the engine, bound to hosts.

A step or provider names a secret (`{"secret": "NAME"}`); it never reaches the server's
environment or settings. The one exception is the operator's: AUXOT_OPERATOR_SECRETS may
grant an organization named environment variables (`{"env": "NAME"}`), read from the
worker's environment only. Values never go into errors, audit extras or logs.
"""

import base64
import binascii
import json
import os
import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from auxot import crypto
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


# --- credentials known by their format, in free text ------------------------------------
# A name (above) says a constant under it is a credential; these say it of a value itself,
# wherever an admin pasted it (a prompt, an approval's instructions, an expression's
# constant, a JSON Schema's `const` or `examples`): the formats that announce themselves
# with a fixed prefix, a fixed shape or a checksum. Each is anchored at both ends, so it
# never matches inside a longer word or token, and most also want their random part to
# look random (a digit in it, several distinct characters): ordinary prose, UUIDs, hex
# digests, base64 of ordinary data, URLs and placeholders (`ghp_xxxx…`) match none
# (tests/auxot/test_credential_formats.py keeps a list of them). Entropy and keyword
# guesses are not used: a false refusal leaves an admin no way to save a workflow.
_WORD_CHAR = r"A-Za-z0-9_\-"
_AUXOT_KEY_CHECKSUM_DIGITS = 6  # apikeys/tokens.py: CRC32 of what comes before, low 24 bits


def _looks_random(body: str) -> bool:
    """Not a placeholder (`ghp_xxxx…`, `AKIA0000…`): eight distinct characters or more."""
    return len(set(body)) >= 8


def _has_digit(body: str) -> bool:
    return any(char.isdigit() for char in body) and _looks_random(body)


def _mixed_case(body: str) -> bool:
    return (any(char.isupper() for char in body) and any(char.islower() for char in body)
            and _looks_random(body))


def _random_run(body: str) -> bool:
    """An `sk-` key's random part: a run of 20+ letters and digits with both in it (not
    `sk-my-long-placeholder-name`)."""
    return any(any(c.isdigit() for c in run) and any(c.isalpha() for c in run)
               and _looks_random(run) for run in re.findall(r"[A-Za-z0-9]{20,}", body))


def _auxot_checksum(body: str) -> bool:
    text, checksum = body[:-_AUXOT_KEY_CHECKSUM_DIGITS], body[-_AUXOT_KEY_CHECKSUM_DIGITS:]
    return f"{binascii.crc32(text.encode()) & 0xFFFFFF:06x}" == checksum


def _jwt_header(body: str) -> bool:
    """A JWT's first part decodes to a JSON object naming its algorithm."""
    head = body.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _last_part_random(body: str) -> bool:
    """A webhook URL's token (its last path segment) looks random: not a placeholder
    (`…/XXXXXXXXXXXXXXXXXXXXXXXX`)."""
    return _looks_random(body.rsplit("/", 1)[-1])


def _format(kind: str, pattern: str, check=_looks_random, flags: int = 0):
    """(kind, regex, check): `(?P<body>…)` in `pattern` is what `check` looks at."""
    return kind, re.compile(rf"(?<![{_WORD_CHAR}]){pattern}(?![{_WORD_CHAR}])", flags), check


CREDENTIAL_FORMATS = (
    # Ours (apikeys/tokens.py): `user.`/`team.` + 12 base32 + 43 base64url + 6 hex of CRC32.
    _format("Auxot API key", r"(?<!\.)(?P<body>(?:user|team)\.[a-z2-7]{12}\.[A-Za-z0-9_-]{43}"
            r"[0-9a-f]{6})", _auxot_checksum),
    _format("GitHub token", r"gh[pousr]_(?P<body>[A-Za-z0-9]{36,251})"),
    _format("GitHub token", r"github_pat_(?P<body>[A-Za-z0-9_]{60,251})"),
    _format("GitLab token", r"gl(?:pat|dt|rt|ft|soat|cbt|imt|ptt|oas|agent)-"
            r"(?P<body>[A-Za-z0-9_-]{20,})"),
    _format("OpenAI-style API key (sk-…)", r"sk-(?P<body>[A-Za-z0-9_-]{20,})", _random_run),
    _format("Stripe secret key", r"[rs]k_(?:live|test)_(?P<body>[A-Za-z0-9]{20,})"),
    _format("Slack token", r"(?:xox[abprse]|xapp)-(?P<body>[0-9]+-[A-Za-z0-9-]{8,})"),
    # A digit is required: a body of 16 capital letters (3.6 % of real IDs) cannot be told
    # from an all-caps name (`ASIAPACIFICSALESTEAM`) by its format.
    _format("AWS access key ID", r"(?:AKIA|ASIA|ABIA|ACCA)(?P<body>[A-Z0-9]{16})", _has_digit),
    _format("Google API key", r"AIza(?P<body>[A-Za-z0-9_-]{35})"),
    _format("SendGrid API key", r"SG\.(?P<body>[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})"),
    _format("npm token", r"npm_(?P<body>[A-Za-z0-9]{36})"),
    _format("PyPI token", r"pypi-AgEIcHlwaS5vcmc(?P<body>[A-Za-z0-9_-]{50,})"),
    _format("Hugging Face token", r"hf_(?P<body>[A-Za-z0-9]{34,})", _mixed_case),
    _format("JSON Web Token", r"(?P<body>eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."
            r"[A-Za-z0-9_-]{16,})", _jwt_header),
    # Incoming-webhook URLs: the path is the credential (anyone holding it posts to the
    # channel). Slack: /services/T<workspace>/B<hook>/<24-character token>; Discord:
    # /api[/v<n>]/webhooks/<snowflake id>/<68-character token>. The scheme is optional.
    _format("Slack webhook URL", r"(?:https?://)?hooks\.slack\.com/services/"
            r"(?P<body>T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,40})", _last_part_random),
    _format("Discord webhook URL", r"(?:https?://)?(?:(?:www|ptb|canary)\.)?discord(?:app)?"
            r"\.com/api/(?:v[0-9]{1,2}/)?webhooks/(?P<body>[0-9]{17,20}/[A-Za-z0-9_-]{60,100})",
            _last_part_random),
    # The whole block, to its END line (or the end of the text): the key is its body.
    ("private key", re.compile(
        r"-----BEGIN[A-Z0-9 ]* PRIVATE KEY(?: BLOCK)?-----(?P<body>.*?)"
        r"(?:-----END[A-Z0-9 ]* PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL),
     lambda body: True),
)
# Around a match, what is taken with it when it is redacted: the rest of its word (a
# token's tail past what the pattern needs, the URL it sits in), up to a space or quote.
_WORD_AROUND = re.compile(r"[^\s'\"`,;(){}\[\]<>|]*")


def _credential_spans(text: str) -> list[tuple[str, int, int]]:
    found = []
    for kind, pattern, check in CREDENTIAL_FORMATS:
        for match in pattern.finditer(text):
            if check(match.group("body")):
                found.append((kind, match.start(), match.end()))
    return sorted(found, key=lambda span: span[1])


def credential_formats(text: Any) -> list[str]:
    """The kinds of credential (`GitHub token`, `Auxot API key`) whose format is in `text`,
    in order of appearance, each once; [] for anything but a string."""
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(kind for kind, _, _ in _credential_spans(text)))


def credential_formats_redacted(text: str) -> str:
    """`text` with each credential `credential_formats` finds, and the rest of the word it
    sits in, replaced by REDACTED (a private key: its whole block)."""
    spans = []
    for _, start, end in _credential_spans(text):
        before = _WORD_AROUND.search(text[:start][::-1])
        start -= before.end() if before else 0
        end += _WORD_AROUND.match(text, end).end() - end
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    for start, end in reversed(spans):
        text = f"{text[:start]}REDACTED{text[end:]}"
    return text


def credential_kinds_named(kinds: list[str]) -> str:
    """`a GitHub token`, `an AWS access key ID and a Slack token`."""
    named = [f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}" for kind in kinds]
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"


def free_text_credentials(value: Any) -> list[str]:
    """The kinds of credential found by their format in free text a tenant typed (a name, a
    label, a description, a host list): in a string, or in any string of a JSON value (its
    keys too), each kind once."""
    found: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, str):
            found.extend(credential_formats(item))
        elif isinstance(item, dict):
            for key, inner in item.items():
                walk(key)
                walk(inner)
        elif isinstance(item, list | tuple):
            for inner in item:
                walk(inner)

    walk(value)
    return list(dict.fromkeys(found))


def free_text_refusal(value: Any, field: str) -> str | None:
    """Why `value`, typed into the free-text field `field`, may not be saved (a credential
    found by its format there), naming the field and the credential's kind, never the
    value; None when it may. Names, labels and descriptions are shown to everyone who may
    view the object, in every list, page and audit row, and no secret can fill them."""
    kinds = free_text_credentials(value)
    if not kinds:
        return None
    return (f"{field}: {credential_kinds_named(kinds)} typed here is shown to everyone who "
            "may view it (members, auditors, the audit log). Remove it: a credential belongs "
            "in an organization secret (Secrets), which only a step or a provider can send.")


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
