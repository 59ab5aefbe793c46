import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from auxot.models import Organization
from auxot.outbound import RefusedDestination, url_check
from auxot.secrets import reference_problem
from workflows.handoffs import schema_check, schema_credentials_check
from workflows.kinds import UnknownKind, kind_choices, kind_get
from workflows.kinds.base import RunLimits


class Workflow(models.Model):
    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="workflows",
        verbose_name="organization",
    )
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    input_schema = models.JSONField(
        null=True, blank=True,
        help_text="Optional JSON Schema (Draft 2020-12) the trigger body must match; "
                  "a violating POST gets 422 and creates no work item.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "slug"], name="workflow_slug_per_org")
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # WorkItem.org copies this workflow's org (the fair claim reads it): a workflow
        # moved to another org takes its items along.
        moved = not self._state.adding and Workflow.objects.filter(pk=self.pk).exclude(
            org_id=self.org_id).exists()
        super().save(*args, **kwargs)
        if moved:
            WorkItem.objects.filter(workflow=self).update(org_id=self.org_id)

    def clean(self) -> None:
        schema_check(self.input_schema, field="input_schema")
        schema_credentials_check(self.input_schema, field="input_schema")


class WorkflowOrgField(models.ForeignKey):
    """WorkItem.org: the item's workflow's org, filled in on every insert. save(),
    bulk_create() and auxot.rawsql.insert() (the trigger's one-statement write) all call
    pre_save, so no creation path can leave it out."""

    def pre_save(self, model_instance, add):
        if add and getattr(model_instance, self.attname) is None:
            if model_instance._meta.get_field("workflow").is_cached(model_instance):
                org_id = model_instance.workflow.org_id
            else:
                org_id = Workflow.objects.filter(pk=model_instance.workflow_id).values_list(
                    "org_id", flat=True).first()
            setattr(model_instance, self.attname, org_id)
        return super().pre_save(model_instance, add)


# What an org admin may ask of the workers per work item: each step stores an output of up
# to AUXOT_STEP_OUTPUT_MAX_CHARS and each attempt a row (the poll reads every one), and an
# http or agent step against a server that answers 503 retries each backoff (up to
# AUXOT_RETRY_AFTER_MAX_SECONDS) until its attempts run out: the item never finishes, so
# retention never deletes it. Refused when saved; a step saved before runs capped.
MAX_STEPS_PER_WORKFLOW = 50
MAX_STEP_ATTEMPTS = 20


# Seconds of a task kept for the engine's own work around a step (claims, pure steps,
# writes): a step with the longest timeout still fits a task that started this long ago.
TASK_MARGIN_SECONDS = 10


def numeric_field_help() -> dict[str, str]:
    """"<Model>.<field>": the help the admin shows under each numeric setting of a step or a
    provider, with the caps in force (settings may change them, so not the field's own
    help_text, which a migration would freeze)."""
    cap, default = step_timeout_max(), settings.AUXOT_STEP_TIMEOUT_SECONDS
    attempts = min(settings.AUXOT_STEP_MAX_ATTEMPTS, MAX_STEP_ATTEMPTS)
    return {
        "Step.timeout_seconds": (
            f"Empty: AUXOT_STEP_TIMEOUT_SECONDS ({min(default, cap)} s). At most {cap} s "
            "(a worker's task is stopped at AUXOT_TASK_TIMEOUT_SECONDS). An http step's "
            "timeout_seconds and its agent provider's timeout may not exceed it."),
        "Step.max_attempts": (
            f"Empty: AUXOT_STEP_MAX_ATTEMPTS ({attempts}). At most {MAX_STEP_ATTEMPTS}."),
        "Step.position": "Where the step runs in its workflow, lowest first.",
        "Provider.timeout_seconds": (
            f"Seconds a call may take, at most {cap}. A call is also cut at the calling agent "
            "step's timeout: an agent step whose timeout is shorter is refused when saved, "
            "and so is a timeout here above a saved agent step's (the steps are named)."),
        "Provider.concurrency_limit": (
            "Calls in flight at once, at least 1; further items wait in arrival order."),
    }


def step_timeout_max() -> int:
    """The longest a step attempt may run: a worker's task timeout less the lease's grace
    and a margin for the engine's own writes."""
    return max(1, settings.AUXOT_TASK_TIMEOUT_SECONDS - settings.AUXOT_LEASE_GRACE_SECONDS
               - TASK_MARGIN_SECONDS)


class Step(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=kind_choices)
    config = models.JSONField(default=dict, blank=True)
    timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: AUXOT_STEP_TIMEOUT_SECONDS."
    )
    max_attempts = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: AUXOT_STEP_MAX_ATTEMPTS."
    )
    output_schema = models.JSONField(
        null=True, blank=True,
        help_text="Optional JSON Schema this step's output must match; a violation fails "
                  "the item with code bad_handoff.",
    )

    class Meta:
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "position"], name="step_position_unique")
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.name} ({self.kind})"

    @property
    def attempts(self) -> int:
        """Attempts an item may make at this step: its own setting or the default, never
        more than MAX_STEP_ATTEMPTS (a step saved before that was refused)."""
        return min(self.max_attempts or settings.AUXOT_STEP_MAX_ATTEMPTS, MAX_STEP_ATTEMPTS)

    @property
    def timeout(self) -> int:
        """Seconds an attempt may take: its own setting or the default, never more than a
        worker's task may run (django-q2 kills it at AUXOT_TASK_TIMEOUT_SECONDS, and an
        attempt killed that way would keep its lease until its own timeout passed)."""
        return min(self.timeout_seconds or settings.AUXOT_STEP_TIMEOUT_SECONDS,
                   step_timeout_max())

    def run_limits(self, workflow: "Workflow | None") -> RunLimits:
        """What run time holds this step's settings to, for its kind's `validate_limits`."""
        providers = {}
        if (workflow is not None and workflow.org_id is not None
                and kind_get(self.kind).uses_providers):
            providers = dict(Provider.objects.filter(org_id=workflow.org_id, active=True)
                             .values_list("name", "timeout_seconds"))
        return RunLimits(step_timeout=self.timeout, step_timeout_max=step_timeout_max(),
                         provider_timeouts=providers)

    def clean(self) -> None:
        try:
            kind = kind_get(self.kind)
        except UnknownKind:
            raise ValidationError({"kind": f"Unknown step kind {self.kind!r}."}) from None
        if not isinstance(self.config, dict):
            raise ValidationError({"config": "config must be a JSON object."})
        kind.validate_config(self.config)
        kind.validate_stored(self.config)
        try:
            workflow = self.workflow  # an inline's unsaved parent counts: it has its org
        except Workflow.DoesNotExist:
            workflow = None
        if workflow is not None and workflow.org_id is not None:
            kind.validate_references(self.config, org_id=workflow.org_id)
        kind.validate_limits(self.config, self.run_limits(workflow))
        schema_check(self.output_schema, field="output_schema")
        schema_credentials_check(self.output_schema, field="output_schema")
        if self.max_attempts is not None and self.max_attempts > MAX_STEP_ATTEMPTS:
            raise ValidationError({"max_attempts": (
                f"At most {MAX_STEP_ATTEMPTS}: each attempt is a row the poll reads, and an "
                "item whose receiver keeps failing would wait for hours between them.")})
        if workflow is not None and workflow.pk is not None and self._state.adding and (
                Step.objects.filter(workflow=workflow).count() >= MAX_STEPS_PER_WORKFLOW):
            raise ValidationError(f"A workflow has at most {MAX_STEPS_PER_WORKFLOW} steps: "
                                  "each stores an output for every item that runs it.")
        if self.timeout_seconds is not None and self.timeout_seconds > step_timeout_max():
            raise ValidationError({"timeout_seconds": (
                f"At most {step_timeout_max()} seconds: a worker's task is stopped at "
                f"AUXOT_TASK_TIMEOUT_SECONDS ({settings.AUXOT_TASK_TIMEOUT_SECONDS} s).")})


class WorkItem(models.Model):
    """One run of a workflow. The row is the source of truth; queue messages carry only its id."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.PENDING, Status.RUNNING)

    class Waiting(models.TextChoices):
        QUEUE = "queue", "Queue"
        WORKER = "worker", "Worker"
        DELAY = "delay", "Delay"
        APPROVAL = "approval", "Approval"
        PROVIDER = "provider", "Provider"
        BACKOFF = "backoff", "Backoff"

    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="work_items")
    # The workflow's org, copied (WorkflowOrgField fills it in; Workflow.save keeps it): the
    # fair claim (workflows/batch.py) walks due items per org on one index, which a join
    # through the workflow could not use.
    org = WorkflowOrgField(Organization, on_delete=models.PROTECT, related_name="+",
                           editable=False, db_index=False, verbose_name="organization")
    # Relations by label (no import): an item records where it came from.
    intake = models.ForeignKey(
        "intakes.Intake", null=True, blank=True, on_delete=models.PROTECT,
        related_name="work_items",
    )
    input = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)  # {"code", "message", "step"}
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by_key = models.ForeignKey(
        "apikeys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_ip = models.GenericIPAddressField("created by IP", null=True, blank=True)
    correlation_id = models.CharField("correlation ID", max_length=200, blank=True)
    # Per-request callback override (Auxot-Callback-Url); empty: the intake's default.
    callback_url = models.URLField("callback URL", max_length=2000, blank=True)
    # The X-Request-Id of the request that created it: in its log lines and its callback.
    request_id = models.CharField("request ID", max_length=200, blank=True)
    # Set when retention removed its input, output and step results (the item stays).
    redacted_at = models.DateTimeField(null=True, blank=True)
    # Replay: the failed item this one takes forward, the step position it resumed at, and
    # per step the Idempotency-Key to send instead of "<work id>:<position>" (by
    # step_key_name; replays made before that are keyed by the step's position).
    replay_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="replays")
    resumed_from_step = models.PositiveIntegerField(null=True, blank=True)
    step_keys = models.JSONField(default=dict, blank=True)
    replay_batch = models.ForeignKey("ReplayBatch", null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="replays")

    # Scheduling state, owned by the engine.
    current_step = models.PositiveIntegerField(default=0)  # index into the ordered steps
    # When a worker may next claim the item: now for new work, the wake time of a parked
    # item, the lease's end while a worker holds it (so a dead worker's item comes due by
    # itself), null once terminal. Claiming = a guarded UPDATE on next_run_at <= now.
    next_run_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.CharField(max_length=32, blank=True)  # set while a worker holds it
    waiting_on = models.CharField(max_length=16, choices=Waiting.choices, blank=True)
    waiting_since = models.DateTimeField(null=True, blank=True)
    waiting_detail = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["next_run_at"], name="workitem_due",
                condition=models.Q(next_run_at__isnull=False),
            ),
            # The fair claim: the orgs with scheduled items (a skip scan) and each org's
            # due items, oldest first.
            models.Index(
                fields=["org", "next_run_at"], name="workitem_org_due",
                condition=models.Q(next_run_at__isnull=False),
            ),
            models.Index(fields=["intake", "-created_at"], name="workitem_intake_recent"),
            # /metrics counts unfinished items each scrape: only they are in this index.
            models.Index(fields=["status"], name="workitem_active",
                         condition=models.Q(status__in=["pending", "running"])),
            # Retention finds finished items by age per intake.
            models.Index(fields=["intake", "finished_at"], name="workitem_intake_finished",
                         condition=models.Q(finished_at__isnull=False)),
            # Redaction finds the items it has not redacted yet: the redacted ones (kept
            # until they are deleted, 60 days by default) are not in it.
            models.Index(fields=["intake", "finished_at"], name="workitem_unredacted",
                         condition=models.Q(finished_at__isnull=False,
                                            redacted_at__isnull=True)),
            models.Index(fields=["status", "finished_at"], name="workitem_finished"),
            # The work history's search looks a whole correlation id up. Only items that
            # carry one are in it: a trigger without the header pays nothing for it.
            models.Index(fields=["correlation_id"], name="workitem_correlation",
                         condition=~models.Q(correlation_id="")),
        ]
        constraints = [
            # A bulk replay takes each failed item forward at most once, whatever crashes.
            models.UniqueConstraint(fields=["replay_batch", "replay_of"],
                                    name="one_replay_per_item_per_batch"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    def idempotency_key(self, step: "Step") -> str:
        """The Idempotency-Key this item sends `step` with."""
        return (self.step_keys.get(step_key_name(step)) or self.step_keys.get(str(step.position))
                or f"{self.pk}:{step.position}")

    @property
    def is_terminal(self) -> bool:
        return self.status in (self.Status.COMPLETED, self.Status.FAILED)


def step_key_name(step: "Step") -> str:
    """A step's entry in WorkItem.step_keys (by id: renumbering the steps changes nothing)."""
    return f"step:{step.pk}"


class StepRun(models.Model):
    """One attempt at one step. Written before the step starts, so a crash is counted."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        WAITING = "waiting", "Waiting"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CRASHED = "crashed", "Crashed"  # its worker died or its lease expired
        DISCARDED = "discarded", "Discarded"  # the item was canceled meanwhile
        CARRIED = "carried", "Carried"  # a replay's step taken from the original, not run

    DONE = (Status.COMPLETED, Status.CARRIED)

    work_item = models.ForeignKey(WorkItem, on_delete=models.CASCADE, related_name="step_runs")
    step = models.ForeignKey(Step, on_delete=models.PROTECT, related_name="runs")
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    state = models.JSONField(default=dict, blank=True)  # kind-specific (a delay's wake time)

    class Meta:
        ordering = ["work_item", "step__position", "attempt"]
        constraints = [
            models.UniqueConstraint(
                fields=["work_item", "step", "attempt"], name="steprun_attempt_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.step.name} #{self.attempt} ({self.status})"


class ReplayBatch(models.Model):
    """A bulk replay: the failed items to take forward, worked through by django-q2 in
    chunks. `cursor` counts the ids handled; each chunk commits its replays with the
    cursor, so a crash repeats nothing and the next task continues where it stopped."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    id = models.UUIDField("ID", primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+",
        verbose_name="organization",
    )
    start_over = models.BooleanField(default=False)
    label = models.CharField(max_length=300, blank=True)
    reason = models.CharField(max_length=500, blank=True)  # why, as its creator said
    work_ids = models.JSONField("work IDs", default=list)
    total = models.PositiveIntegerField(default=0)
    cursor = models.PositiveIntegerField(default=0)
    replayed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    skip_reasons = models.JSONField(default=dict, blank=True)  # {reason: count}
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    progressed_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "progressed_at"], name="replaybatch_active")]

    def __str__(self) -> str:
        return f"replay of {self.total} item(s) ({self.status})"


class WorkerHeartbeat(models.Model):
    """Written by each qcluster's ticker, so a poll can tell 'no worker is running'."""

    name = models.CharField(max_length=200, unique=True)  # host:pid
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.name


# The provider fields saved steps' validity reads (`Step.run_limits`): an edit of one is
# checked against them (`Provider._steps_kept_valid`). The organization is fixed once set.
PROVIDER_FIELDS_STEPS_READ = ("org", "name", "timeout_seconds", "active")


class Provider(models.Model):
    """An OpenAI-compatible chat-completions endpoint, managed by admins.

    The API key is an organization secret named by `api_key_secret` (bound to hosts that
    must include the base URL's). `api_key_env` is the operator's escape hatch: it resolves
    only when AUXOT_OPERATOR_SECRETS grants that variable to the provider's organization.
    """

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="providers",
        verbose_name="organization",
    )
    name = models.SlugField(max_length=80, help_text="Referenced by agent steps: "
                            '{"provider": "<name>"}.')
    base_url = models.URLField("base URL", max_length=500, help_text="e.g. https://api.openai.com/v1")
    model = models.CharField(max_length=200)
    api_key_secret = models.CharField(
        "API key secret", max_length=100, blank=True,
        help_text="Name of the organization secret holding the API key (sent as "
                  "'Authorization: Bearer <key>'). Empty: no Authorization header.",
    )
    api_key_env = models.CharField(
        "API key env", max_length=100, blank=True,
        help_text="Only when the operator granted this organization an environment variable "
                  "(AUXOT_OPERATOR_SECRETS): its name. Otherwise leave empty.",
    )
    concurrency_limit = models.PositiveIntegerField(
        default=4, help_text="Calls in flight at once; further items wait in arrival order.")
    timeout_seconds = models.PositiveIntegerField(default=60)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "name"], name="provider_name_per_org")
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValidationError({"concurrency_limit": "At least 1."})
        if self.timeout_seconds > step_timeout_max():
            raise ValidationError({"timeout_seconds": (
                f"At most {step_timeout_max()} seconds: the agent step that calls it cannot "
                "run longer.")})
        if self.api_key_secret and self.api_key_env:
            raise ValidationError({"api_key_env": "Give an API key secret or an operator-granted "
                                                  "variable, not both."})
        if self.base_url:
            try:  # the outbound policy at save time; the connection check still decides
                url_check(self.base_url, purpose="agent")
            except RefusedDestination as exc:
                raise ValidationError({"base_url": ValidationError(str(exc), code=exc.code)}
                                      ) from None
            if "?" in self.base_url or "#" in self.base_url:
                # `/chat/completions` is appended to it; and a key in its query would be
                # shown to every viewer of the provider.
                raise ValidationError({"base_url": (
                    "The base URL may not have a ?query or #fragment: /chat/completions is "
                    "appended to it. Send the key as the API key secret.")})
        self._steps_kept_valid()
        ref = self.api_key_reference
        field = "api_key_env" if self.api_key_env else "api_key_secret"
        if ref is not None and self.org_id is not None:
            url = (self.base_url or "").rstrip("/") + "/chat/completions"
            problem = reference_problem(org_id=self.org_id, ref=ref,
                                        url=url if self.base_url else None)
            if problem:
                raise ValidationError({field: problem})

    def _steps_kept_valid(self) -> None:
        """Refuse an edit (a raised timeout, a reactivation, a rename, a new provider) that
        would make a saved step of the organization invalid: its settings are checked
        against its organization's active providers' timeouts when it is saved
        (`Step.run_limits`, `StepKind.validate_limits`), and an edit here changes those
        limits under it. A step already invalid before the edit does not block it.
        PROVIDER_FIELDS_STEPS_READ are the fields that feed those limits."""
        if self.org_id is None:
            return
        stored = dict(Provider.objects.filter(org_id=self.org_id, active=True)
                      .values_list("name", "timeout_seconds"))
        after = dict(stored)
        if self.pk is not None:
            old = Provider.objects.filter(pk=self.pk).values_list("name", flat=True).first()
            after.pop(old, None)
        if self.active:
            after[self.name] = self.timeout_seconds
        if after == stored:
            return
        broken = []
        kinds = [name for name, _label in kind_choices() if kind_get(name).uses_providers]
        for step in (Step.objects.filter(workflow__org_id=self.org_id, kind__in=kinds)
                     .select_related("workflow").order_by("workflow__name", "position")):
            kind, limits = kind_get(step.kind), step.run_limits(step.workflow)
            try:
                kind.validate_limits(step.config, limits)
            except ValidationError:
                continue  # invalid before this edit: not this edit's doing
            try:
                kind.validate_limits(step.config, RunLimits(
                    step_timeout=limits.step_timeout, step_timeout_max=limits.step_timeout_max,
                    provider_timeouts=after))
            except ValidationError:
                broken.append(f"“{step.workflow.name}” step {step.position} “{step.name}” "
                              f"(timeout {step.timeout:g} s)")
        if broken:
            shown = ", ".join(broken[:10]) + (f" and {len(broken) - 10} more"
                                             if len(broken) > 10 else "")
            raise ValidationError({"timeout_seconds": (
                f"Saved agent steps call this provider with a shorter timeout than "
                f"{self.timeout_seconds:g} seconds, and their calls would be cut: {shown}. "
                "Raise those steps' Timeout seconds first, or keep this provider's timeout "
                "at most theirs.")})

    @property
    def api_key_reference(self) -> dict | None:
        """The API key as a secret reference, as an http step's secret_headers would name it."""
        if self.api_key_secret:
            return {"secret": self.api_key_secret, "prefix": "Bearer "}
        if self.api_key_env:
            return {"env": self.api_key_env, "prefix": "Bearer "}
        return None


class ProviderTicket(models.Model):
    """A work item's place at a provider: queued in arrival order, or holding a slot.

    A holder's slot is leased (`lease_until`): a SIGKILLed worker never releases it, so an
    expired lease frees the slot by itself.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="tickets")
    work_item = models.OneToOneField("WorkItem", on_delete=models.CASCADE,
                                     related_name="provider_ticket")
    arrived_at = models.DateTimeField()
    granted_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        # In line order (who is ahead), and by lease (who holds a live slot): each look
        # reads the few rows it needs, not the whole line (workflows/providers.py).
        indexes = [models.Index(fields=["provider", "arrived_at"], name="ticket_arrival"),
                   models.Index(fields=["provider", "lease_until"], name="ticket_lease")]

    def __str__(self) -> str:
        return f"{self.provider} <- {self.work_item_id}"


class Approval(models.Model):
    """A decision on an approval step: who, when, what and why."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    work_item = models.ForeignKey("WorkItem", on_delete=models.CASCADE, related_name="approvals")
    step = models.ForeignKey(Step, on_delete=models.PROTECT, related_name="approvals")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    decided_via = models.CharField(max_length=100, blank=True)  # "admin" or "key <lookup>"
    decided_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["work_item", "step"], name="one_decision_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.decision} by {self.decided_by} at {self.decided_at}"
