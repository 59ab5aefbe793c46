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

    def __str__(self) -> str:
        return self.name
