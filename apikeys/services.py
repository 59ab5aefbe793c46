import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apikeys.lookup import apikey_lookup
from apikeys.models import ApiKey
from apikeys.tokens import (
    TOKEN_LENGTH,
    token_digest,
    token_generate,
    token_parse,
    token_shaped,
    token_truncated,
)
from auxot.errors import (
    ApplicationError,
    ObjectGoneError,
    UnauthorizedError,
    row_gone,
    row_refresh,
)
from auxot.models import Membership, Organization, Team
from auxot.secrets import free_text_check
from auxot.services import audit_deletion, audit_record


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    token: str  # shown once; never stored


def apikey_issue(
    *,
    org: Organization,
    label: str,
    user=None,
    team: Team | None = None,
    created_by=None,
    expires_at: datetime | None = None,
    ip: str | None = None,
    actor_label: str = "",
) -> IssuedKey:
    """Issue a personal key (user=...) or a team key (team=...). Returns the token once.
    `actor_label` names who issued it when no user did (a shell command)."""
    if (user is None) == (team is None):
        raise ApplicationError("A key belongs to exactly one user or one team.")
    if not label.strip():
        raise ApplicationError("A key needs a label.")
    free_text_check(label, "label")
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ApplicationError("The expiry must be in the future.")
    if team is not None:
        if team.org_id != org.pk:
            raise ApplicationError("That team belongs to another organization.")
        if refusal := org.teams_refusal():
            raise ApplicationError(refusal, code="forbidden")
    elif not Membership.objects.filter(user=user, org=org).exists():
        raise ApplicationError("A personal key's owner must be a member of the organization.")
    kind = ApiKey.Kind.TEAM if team is not None else ApiKey.Kind.USER
    token = token_generate(kind)
    parsed = token_parse(token)
    with transaction.atomic():
        if user is not None:
            # The membership row lock makes concurrent issues for one person take turns, so
            # the count below cannot be overrun.
            Membership.objects.select_for_update().filter(user=user, org=org).first()
            apikey_cap_check(org=org, user=user, now=now)
        key = ApiKey.objects.create(
            kind=kind, org=org, user=user, team=team, label=label.strip(),
            lookup_id=parsed.lookup_id, digest=parsed.digest, last_four=token[-4:],
            created_by=created_by, created_at=now, expires_at=expires_at,
        )
        audit_record(
            event="apikey.issued", org=org, actor_user=created_by, obj=key, now=now, ip=ip,
            actor_label=actor_label,
            extra={"kind": kind, "label": key.label, "lookup_id": key.lookup_id},
        )
    return IssuedKey(key=key, token=token)


def apikey_cap_check(*, org: Organization, user, now: datetime | None = None) -> None:
    """Raise unless `user` may hold one more active personal key in `org`
    (AUXOT_MAX_KEYS_PER_USER; 0 = no cap)."""
    cap = settings.AUXOT_MAX_KEYS_PER_USER
    if not cap:
        return
    now = now or timezone.now()
    active = ApiKey.objects.filter(org=org, user=user, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)).count()
    if active >= cap:
        raise ApplicationError(
            f"{user.get_username()} already holds {active} active personal API keys in "
            f"{org.name}, the most one person may hold ({cap}); revoke one first.",
            code="conflict")


def apikey_revoke(*, key: ApiKey, revoked_by=None, ip: str | None = None) -> ApiKey:
    """Revoke a key. Final: a revoked key never works again. ObjectGoneError when the key
    was deleted (with its team, owner or organization) since it was read."""
    now = timezone.now()
    with transaction.atomic():
        changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=revoked_by
        )
        if not changed and row_gone(key):
            raise ObjectGoneError(key)
        if changed:
            audit_record(
                event="apikey.revoked", org=key.org, actor_user=revoked_by, obj=key, now=now,
                ip=ip,
                extra={"kind": key.kind, "label": key.label, "lookup_id": key.lookup_id},
            )
        row_refresh(key)
    return key


def apikey_deletion_record(*, key: ApiKey, origin) -> None:
    """Audit a key deleted with its team, its owner or its organization (the admin never
    deletes a key itself: it revokes). Without this a key could vanish from the trail."""
    audit_deletion(
        event="apikey.deleted", obj=key, org=key.org, origin=origin,
        extra={"kind": key.kind, "label": key.label, "lookup_id": key.lookup_id,
               "was": "revoked" if key.revoked_at else "active"})


def apikey_authenticate(*, token: str, now: datetime,
                        load: Callable[[str], ApiKey | None] | None = None) -> ApiKey:
    """Find the active key for a bearer token, or raise UnauthorizedError.

    `load(lookup_id)` reads the key with its org, user and team (default: apikey_lookup);
    a caller may read more in the same SELECT (intakes: the URL's intake and the access
    check). Every check below runs on what was read for this request: nothing is cached.
    """
    parsed = token_parse(token)
    if parsed is None:
        if token_shaped(token):  # the right shape, a checksum that does not match
            raise UnauthorizedError("The API key's checksum does not match: it was mistyped "
                                    "or cut short. Copy it again.")
        if token_truncated(token):  # the start of a key, its end lost in the copy
            raise UnauthorizedError(f"The API key is cut short: {len(token)} of its "
                                    f"{TOKEN_LENGTH} characters. Copy it again, whole.")
        raise UnauthorizedError("The API key is malformed. Keys look like user.… or team.….")
    # one hand-written SELECT with joins
    key = load(parsed.lookup_id) if load else apikey_lookup(lookup_id=parsed.lookup_id)
    if key is None or not hmac.compare_digest(key.digest, parsed.digest):
        raise UnauthorizedError("Unknown API key.")
    _refuse_unusable(key, now)
    _touch(key, now)
    return key


def _refuse_unusable(key: ApiKey, now: datetime) -> None:
    if key.revoked_at is not None:
        raise UnauthorizedError("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        raise UnauthorizedError("This API key has expired.")
    if key.user is not None and not key.user.is_active:
        raise UnauthorizedError("This API key's owner is deactivated.")
    if key.kind == ApiKey.Kind.TEAM and (refusal := key.org.teams_refusal()):
        # The plan is read with the key (one joined SELECT): a downgrade stops team keys at
        # once, and an upgrade brings the same keys back.
        raise UnauthorizedError(refusal)


def apikey_recheck(*, key: ApiKey, now: datetime) -> None:
    """The checks of apikey_authenticate again, on the key as stored now (one SELECT), for
    a request that outlives its authentication (a long-poll): UnauthorizedError when the
    key was revoked, expired, its owner deactivated or its team plan lost meanwhile."""
    current = apikey_lookup(lookup_id=key.lookup_id)
    if current is None or current.pk != key.pk:
        raise UnauthorizedError("Unknown API key.")
    _refuse_unusable(current, now)


def _touch(key: ApiKey, now: datetime) -> None:
    # One write per key per interval, not per request: keeps the hot path at one commit.
    interval = timedelta(seconds=settings.AUXOT_KEY_TOUCH_SECONDS)
    if key.last_used_at is None or now - key.last_used_at >= interval:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def apikey_digest_matches(key: ApiKey, token: str) -> bool:
    return hmac.compare_digest(key.digest, token_digest(token))
