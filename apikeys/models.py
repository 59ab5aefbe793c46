import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from auxot.models import Organization, Team


class ApiKey(models.Model):
    """A bearer key. Only the SHA-256 digest of the token is stored; the token is shown once."""

    class Kind(models.TextChoices):
        USER = "user", "Personal key"
        TEAM = "team", "Team key"

    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys",
        verbose_name="organization",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="api_keys",
    )
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    label = models.CharField(max_length=200)
    lookup_id = models.CharField("lookup ID", max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    last_four = models.CharField(max_length=4)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(kind="user", user__isnull=False, team__isnull=True)
                    | models.Q(kind="team", team__isnull=False, user__isnull=True)
                ),
                name="apikey_owner_matches_kind",
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.kind}.{self.lookup_id}…{self.last_four})"

    @property
    def display(self) -> str:
        return f"{self.kind}.{self.lookup_id}.…{self.last_four}"

    def is_active(self, now) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
