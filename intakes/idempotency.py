"""Idempotent triggers: the `Idempotency-Key` header (IETF draft), with Stripe's rules.

- 1-255 printable ASCII characters, scoped to the API key's owner (user or team) and the
  intake; kept AUXOT_IDEMPOTENCY_TTL_HOURS (>= 24 h).
- The row is inserted in the transaction that stores the work item: the unique constraint
  picks the one winner, concurrent twins wait for it on the index and then replay it.
- Same key + same JSON value (SHA-256 of its canonical form): the original 202, replayed.
  Same key + another body: 422. Winner still uncommitted after AUXOT_IDEMPOTENCY_WAIT_MS
  (PostgreSQL lock_timeout): 409 with Retry-After. Rejected requests store nothing.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection

from apikeys.models import ApiKey
from auxot.errors import ApplicationError
from intakes.models import IdempotencyKey, Intake

HEADER = "Idempotency-Key"
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class IdempotencyClaim:
    key: str
    owner: str
    body_sha256: str


def idempotency_owner(key: ApiKey) -> str:
    return f"team:{key.team_id}" if key.kind == ApiKey.Kind.TEAM else f"user:{key.user_id}"


def idempotency_claim(*, key: ApiKey, header: str | None, payload: Any,
                      kind: str = "") -> IdempotencyClaim | None:
    """`kind` names a request other than a trigger ("replay"): its digest can then never
    equal a trigger body's (canonical JSON never starts with a name and a NUL), so a key
    used for one is refused for the other instead of answering with the other's item."""
    if header is None:
        return None
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if kind:
        canonical = f"{kind}\0{canonical}"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return IdempotencyClaim(key=header, owner=idempotency_owner(key), body_sha256=digest)


def idempotency_bound_wait() -> None:
    """PostgreSQL: bound how long we wait on an in-flight twin's uncommitted row."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {int(settings.AUXOT_IDEMPOTENCY_WAIT_MS)}")


def idempotency_record(*, claim: IdempotencyClaim, intake: Intake, work_item_id,
                       now: datetime) -> IdempotencyKey:
    """The claim's row, unsaved: it is written with its work item in one statement, and
    the insert raises IntegrityError when another request holds the key."""
    return IdempotencyKey(
        intake=intake, owner=claim.owner, key=claim.key, body_sha256=claim.body_sha256,
        work_item_id=work_item_id, created_at=now,
        expires_at=now + timedelta(hours=settings.AUXOT_IDEMPOTENCY_TTL_HOURS),
    )


def idempotency_store(*, claim: IdempotencyClaim, intake: Intake, work_item_id, now: datetime):
    """Insert the claim; raises IntegrityError when another request holds the key."""
    idempotency_record(claim=claim, intake=intake, work_item_id=work_item_id,
                       now=now).save(force_insert=True)


def idempotency_winner(*, claim: IdempotencyClaim, intake: Intake, now: datetime):
    """The work item that owns the key, after our insert lost; None when the key is free
    again (the winner rolled back, or its record expired and was deleted here)."""
    record = (IdempotencyKey.objects.select_related("work_item")
              .filter(intake=intake, owner=claim.owner, key=claim.key).first())
    if record is None:
        return None
    if record.expires_at <= now:
        IdempotencyKey.objects.filter(pk=record.pk, expires_at__lte=now).delete()
        return None
    if record.body_sha256 != claim.body_sha256:
        raise ApplicationError(
            f"This {HEADER} was already used with a different body; use a new key.",
            code="idempotency_key_reused",
        )
    return record.work_item


def idempotency_in_flight_error() -> ApplicationError:
    return ApplicationError(
        f"A request with this {HEADER} is still being processed; retry shortly.",
        code="idempotency_in_flight", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def is_lock_timeout(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "55P03"  # lock_not_available


def idempotency_prune(*, now: datetime, batch: int = 5000) -> int:
    ids = list(IdempotencyKey.objects.filter(expires_at__lte=now)
               .values_list("pk", flat=True)[:batch])
    return IdempotencyKey.objects.filter(pk__in=ids).delete()[0] if ids else 0
