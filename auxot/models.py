import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class Organization(models.Model):
    class Plan(models.TextChoices):
        FREE = "free", "Free"
        PRO = "pro", "Pro"
        BUSINESS = "business", "Business"
        ENTERPRISE = "enterprise", "Enterprise"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    plan = models.CharField(max_length=20, choices=Plan.choices, default=Plan.FREE)
    rate_limit_per_window = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Accepted triggers per rate-limit window across the whole organization (all "
                  "intakes and keys together). Empty: the server default "
                  "(AUXOT_RATE_LIMIT_ORG); 0: no organization-wide limit. Operators only.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def has_teams(self) -> bool:
        """Team keys and team-assigned intakes exist on business and enterprise plans."""
        return self.plan in {self.Plan.BUSINESS, self.Plan.ENTERPRISE}

    def teams_refusal(self) -> str:
        """Why this organization may not use teams now, or "" when it may. The one wording
        for every place that checks (key issue and use, intake team assignment, the admin)."""
        if self.has_teams:
            return ""
        return ("Teams (team API keys, team-assigned intakes) are available on the Business "
                f"and Enterprise plans; this organization is on the {self.get_plan_display()} "
                "plan.")


class _WithOrg(models.Manager):
    """Teams come with their organization: a team is shown as "Org / Team", and lists of
    teams (a filter's choices, a form's options) would otherwise read it once per team."""

    def get_queryset(self):
        return super().get_queryset().select_related("org")


class Team(models.Model):
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="teams",
        verbose_name="organization",
    )
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = _WithOrg()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="team_name_per_org")]

    def __str__(self) -> str:
        return f"{self.org.name} / {self.name}"


class Membership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        AUDITOR = "auditor", "Auditor"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships",
        verbose_name="organization",
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    teams = models.ManyToManyField(Team, blank=True, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "org"], name="one_membership_per_org")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"


class AuditEvent(models.Model):
    """Append-only record of a change, written by the service that makes the change."""

    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        verbose_name="organization",
    )
    created_at = models.DateTimeField(db_index=True)
    event = models.CharField(max_length=64, db_index=True)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A key acting: its lookup id and label (never the secret).
    actor_key_lookup = models.CharField(max_length=32, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField("object ID", max_length=64, blank=True, db_index=True)
    ip = models.GenericIPAddressField("IP", null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "-created_at"], name="audit_org_time")]

    def __str__(self) -> str:
        return f"{self.event} {self.object_type}:{self.object_id}"


class Secret(models.Model):
    """A value steps and providers may send, by name, to the hosts it is bound to.

    Only the encrypted value is stored (auxot.crypto); nothing derived from it (no last
    four, no hash) is kept or shown. Writes go through auxot.secrets.
    """

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="secrets",
        verbose_name="organization",
    )
    name = models.CharField(
        max_length=100,
        validators=[RegexValidator(
            r"^[A-Za-z][A-Za-z0-9_.-]*$",
            "A letter, then letters, digits, '_', '.' or '-' (e.g. PAYMENTS_TOKEN).")],
        help_text='Referenced as {"secret": "<name>"} by http steps and by providers.',
    )
    value_encrypted = models.TextField(editable=False)
    allowed_hosts = models.JSONField(
        default=list, help_text="Host names the value may be sent to (exact, or *.example.com).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["org", "name"]
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="secret_name_per_org")]

    def __str__(self) -> str:
        return self.name


class AuditLogEntry(models.Model):
    """The audit log as read (admin list, CSV export, an item's trail): a database view,
    `auxot_audit_log`, of every AuditEvent plus entries the apps derive from their own rows
    instead of writing a second one. Here it is AuditEvent alone; intakes' migrations add
    each accepted trigger as `work_item.accepted`, read from its work item (key label and
    lookup id, IP, time, org). Read-only: writes go to AuditEvent."""

    id = models.UUIDField("ID", primary_key=True)
    org = models.ForeignKey(Organization, null=True, on_delete=models.DO_NOTHING,
                            db_constraint=False, related_name="+", verbose_name="organization")
    created_at = models.DateTimeField()
    event = models.CharField(max_length=64)
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True,
                                   on_delete=models.DO_NOTHING, db_constraint=False,
                                   related_name="+")
    actor_key_lookup = models.CharField(max_length=32, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField("object ID", max_length=64, blank=True)
    ip = models.GenericIPAddressField("IP", null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        managed = False
        db_table = "auxot_audit_log"
        ordering = ["-created_at"]
        verbose_name = "audit event"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.event} {self.object_type}:{self.object_id}"


# The values of `event` and `object_type` the apps' rows add to the audit log view (each
# app that extends the view names them here, in its AppConfig.ready): the admin's filters
# list them with the audit table's own values, without a DISTINCT over the whole view.
AUDIT_LOG_DERIVED: dict[str, set[str]] = {"event": set(), "object_type": set()}


def audit_log_derives(*, event: str, object_type: str) -> None:
    AUDIT_LOG_DERIVED["event"].add(event)
    AUDIT_LOG_DERIVED["object_type"].add(object_type)
