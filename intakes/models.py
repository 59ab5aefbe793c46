import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from auxot.models import Organization, Team
from workflows.models import Workflow


class Intake(models.Model):
    """An authenticated HTTP entry point bound to one workflow."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="intakes")
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="intakes")
    name = models.CharField(max_length=200)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="intakes",
        help_text="Business and Enterprise: only this team's keys (and its members' personal "
        "keys) may call the intake.",
    )
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    rate_limit_per_window = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Accepted triggers per rate-limit window for this intake (all keys together). "
        "Empty: the AUXOT_RATE_LIMIT_INTAKE default; 0: unlimited.",
    )

    def __str__(self) -> str:
        return self.name


class IdempotencyKey(models.Model):
    """An `Idempotency-Key` a caller sent with an accepted trigger (IETF draft, Stripe rules).

    Inserted in the transaction that stores the work item, so the unique constraint decides
    the race: exactly one request per (intake, owner, key) is ever accepted.
    """

    intake = models.ForeignKey(Intake, on_delete=models.CASCADE, related_name="+")
    # "user:<id>" or "team:<id>": the key's owner, so a rotated key keeps its owner's keys.
    owner = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    body_sha256 = models.CharField(max_length=64)
    work_item = models.ForeignKey("workflows.WorkItem", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["intake", "owner", "key"],
                                    name="idempotency_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.owner}:{self.key}"


class RateLimitBucket(models.Model):
    """A fixed-window counter, incremented with one INSERT ... ON CONFLICT DO UPDATE."""

    scope = models.CharField(max_length=80)  # "key:<id>" or "intake:<uuid>"
    window_start = models.BigIntegerField()  # unix seconds, a multiple of the window length
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "window_start"],
                                    name="ratelimit_bucket_unique")
        ]

    def __str__(self) -> str:
        return f"{self.scope}@{self.window_start}={self.count}"
