import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

from auxot.models import Organization, Team
from workflows.models import Workflow

RETENTION_MAX_DAYS = 36500


class Intake(models.Model):
    """An authenticated HTTP entry point bound to one workflow."""

    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="intakes",
        verbose_name="organization",
    )
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

    # Retention (README "Retention"): empty uses the AUXOT_RETENTION_* defaults. At most
    # RETENTION_MAX_DAYS (a century): a longer age is no date at all.
    payload_retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(RETENTION_MAX_DAYS)],
        help_text="Days a finished work item keeps its input, output and step results; then "
        "they are redacted (the item, its steps and statuses stay). Empty: the "
        "AUXOT_RETENTION_PAYLOAD_DAYS default; 0: never redact.",
    )
    item_retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(RETENTION_MAX_DAYS)],
        help_text="Days a finished work item is kept at all; then it is deleted. Empty: the "
        "AUXOT_RETENTION_DELETE_DAYS default; 0: never delete.",
    )
    redact_paths = models.JSONField(
        default=list, blank=True,
        help_text='JSON paths replaced by "[REDACTED]" in each trigger\'s body before it is '
        'stored, e.g. ["$.customer.email", "$.items[*].card"].',
    )

    # Callbacks (README "Polling or callbacks?"). Secrets are Fernet-encrypted (intakes.secrets).
    callback_url = models.URLField(
        "Callback URL", max_length=2000, blank=True,
        help_text="Default callback URL: Auxot POSTs each finished work item here (signed). "
        "Callers may override it per request with the Auxot-Callback-Url header. Changing "
        "it also moves the retries still waiting for the old one.",
    )
    # When the intake last got a callback URL after having none: work that finished before
    # it has no callback (the sweep that recovers skipped deliveries must not send it one).
    # Null for intakes older than this field: every finished item counts, as before.
    callback_url_set_at = models.DateTimeField("callback URL set at", null=True, blank=True,
                                               editable=False)
    callback_disabled_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Set when the receiver answered 410 Gone: no callbacks until re-enabled.",
    )
    callback_disabled_reason = models.CharField(max_length=300, blank=True)
    signing_secret_encrypted = models.TextField(blank=True, editable=False)
    previous_signing_secret_encrypted = models.TextField(blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from workflows.retention import json_paths_check

        self.redact_paths = self.redact_paths or []
        try:
            json_paths_check(self.redact_paths)
        except ValueError as exc:
            raise ValidationError({"redact_paths": str(exc)}) from None

    @property
    def callback_disabled(self) -> bool:
        return self.callback_disabled_at is not None


class CallbackDelivery(models.Model):
    """One finished work item's callback: its state, schedule and lease. Attempts hang off it."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERING = "delivering", "Delivering"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        DISABLED = "disabled", "Disabled"

    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    intake = models.ForeignKey(Intake, on_delete=models.CASCADE, related_name="deliveries")
    work_item = models.OneToOneField(
        "workflows.WorkItem", on_delete=models.CASCADE, related_name="callback_delivery")
    webhook_id = models.CharField("webhook ID", max_length=64, unique=True)  # same every attempt
    url = models.URLField("URL", max_length=2000)  # may hold query secrets: display redacted
    # scheme://host:port of the URL and the organization (callbacks.endpoint_key): the unit of
    # the per-endpoint cap and circuit breaker.
    endpoint = models.CharField(max_length=300, blank=True, db_index=True)
    uses_intake_default = models.BooleanField(default=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Attempts made before the last "Redeliver now": the retry schedule restarts there.
    schedule_base = models.PositiveIntegerField(default=0)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Like WorkItem.next_run_at: the next attempt's time, or the lease's end while a worker
    # sends (so a dead worker's delivery comes due by itself); null when settled.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.CharField(max_length=32, blank=True)

    class Meta:
        verbose_name_plural = "callback deliveries"
        indexes = [
            models.Index(fields=["next_attempt_at"], name="delivery_due",
                         condition=models.Q(next_attempt_at__isnull=False)),
            models.Index(fields=["intake", "-created_at"], name="delivery_intake_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_id} ({self.state})"


class CallbackEndpoint(models.Model):
    """A receiver endpoint's health, shared by every dispatcher: its circuit breaker.

    Closed while `open_until` is null. After AUXOT_CALLBACK_BREAKER_FAILURES consecutive
    failures (no answer, 5xx, 408, 429) it opens: no delivery to it is claimed (attempt
    numbers stay as they are) until `open_until`; then one dispatcher takes the probe
    (`probe_until`: its lease), and the probe's outcome closes the breaker or opens it again
    for longer.
    """

    key = models.CharField(max_length=300, primary_key=True)  # endpoint_key: URL part and org
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    open_until = models.DateTimeField(null=True, blank=True)
    probe_until = models.DateTimeField(null=True, blank=True)  # the half-open probe's lease
    opened_count = models.PositiveIntegerField(default=0)  # openings in this failing spell
    last_error = models.CharField(max_length=500, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["open_until"], name="endpoint_open",
                                condition=models.Q(open_until__isnull=False))]

    def __str__(self) -> str:
        return self.key

    @property
    def is_open(self) -> bool:
        return self.open_until is not None


class CallbackAttempt(models.Model):
    """One POST (or one refusal before it). Written before sending, so a crash is visible."""

    delivery = models.ForeignKey(CallbackDelivery, on_delete=models.CASCADE,
                                 related_name="attempt_rows")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    url = models.CharField("URL", max_length=2000)  # query string redacted
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)  # first 2 KiB
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"],
                                               name="callback_attempt_unique")]

    def __str__(self) -> str:
        return f"#{self.number} {self.status_code or self.error[:40]}"

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
