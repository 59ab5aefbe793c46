"""The workflows admin: one ModelAdmin per model, each registered once, here.

Pages another app extends (the top app adds its intakes panel to a workflow, its callback
deliveries to a work item) read their extra inlines from `workflow_inlines` and
`workitem_inlines`: that app adds its inline classes in its `AppConfig.ready()`, and this
app never imports it.
"""

import json
import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import InlineModelAdmin
from django.db.models import DurationField, ExpressionWrapper, F
from django.http import Http404, HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from auxot.admin_base import (
    ACTORS,
    OrgScopedAdmin,
    ReadOnlyInlineMixin,
    ScopedInlineMixin,
    audit_extra_text,
    has_role,
    org_action,
    pk_or_none,
    require_role,
)
from auxot.errors import ApplicationError
from auxot.http import client_ip
from auxot.models import AuditEvent, AuditLogEntry
from auxot.outbound import urls_redacted
from auxot.timefmt import shown as time_shown
from workflows.admin_replay import WorkItemReplayMixin
from workflows.handoffs import schema_shown
from workflows.kinds import UnknownKind, kind_get
from workflows.kinds.typed import typed_credentials_redacted
from workflows.models import (
    MAX_STEPS_PER_WORKFLOW,
    Approval,
    Provider,
    Step,
    StepRun,
    Workflow,
    WorkItem,
    numeric_field_help,
)
from workflows.presenters import work_item_view
from workflows.services import work_item_cancel, work_item_decide, work_item_run


class InlineSlot:
    """Inline classes another app adds to one of these pages, in order, each once."""

    def __init__(self) -> None:
        self._inlines: list[type[InlineModelAdmin]] = []

    def add(self, inline: type[InlineModelAdmin]) -> None:
        if inline not in self._inlines:
            self._inlines.append(inline)

    def remove(self, inline: type[InlineModelAdmin]) -> None:
        if inline in self._inlines:
            self._inlines.remove(inline)

    def __iter__(self):
        return iter(list(self._inlines))


workflow_inlines = InlineSlot()  # shown after the steps on a workflow's page
workitem_inlines = InlineSlot()  # shown after the step timeline and approvals on an item's


class ExtendedInlinesMixin:
    """`get_inlines` = the admin's own `inlines` followed by its slot's."""

    inline_slot: InlineSlot

    def get_inlines(self, request, obj):
        own = list(super().get_inlines(request, obj))
        return own + [inline for inline in self.inline_slot if inline not in own]


class NumericHelpMixin:
    """Each numeric setting's help with the caps in force (`numeric_field_help`)."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        shown = numeric_field_help().get(f"{self.model.__name__}.{db_field.name}")
        if field is not None and shown:
            field.help_text = shown
        return field


class StepInline(NumericHelpMixin, ScopedInlineMixin, admin.TabularInline):
    """A step's config, to whoever may not change the workflow (members, auditors,
    viewers), shows as its kind's `config_shown` says: every URL in it redacted, as callback
    URLs are (a static `url` may point at a chat webhook whose path is its credential), and
    a constant typed into an `http` step's credential header or field. The edit form holds
    it whole."""

    model = Step
    extra = 0
    max_num = MAX_STEPS_PER_WORKFLOW  # the rows of one save: Step.clean counts saved ones

    def get_formset(self, request, obj=None, **kwargs):
        return super().get_formset(request, obj, validate_max=True, **kwargs)

    @admin.display(description="config")
    def config_redacted(self, obj) -> str:
        try:
            shown = kind_get(obj.kind).config_shown(obj.config)
        except UnknownKind:
            shown = typed_credentials_redacted(urls_redacted(obj.config))
        return json.dumps(shown, sort_keys=True, ensure_ascii=False)

    @admin.display(description="output schema")
    def output_schema_redacted(self, obj) -> str:
        return json.dumps(schema_shown(obj.output_schema), sort_keys=True, ensure_ascii=False)

    SHOWN = {"config": "config_redacted", "output_schema": "output_schema_redacted"}

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if self.has_change_permission(request, obj):
            return [name for name in fields if name not in self.SHOWN.values()]
        return [self.SHOWN.get(name, name) for name in fields]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), *self.SHOWN.values()]


class RunForm(forms.Form):
    input = forms.CharField(widget=forms.Textarea(attrs={"rows": 10, "cols": 80}),
                            initial="{}", help_text="The JSON body a caller would POST.")

    def clean_input(self):
        try:
            return json.loads(self.cleaned_data["input"])
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno}, "
                                        f"column {exc.colno}.") from None


@admin.register(Workflow)
class WorkflowAdmin(ExtendedInlinesMixin, OrgScopedAdmin):
    list_display = ["name", "org", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [StepInline]
    inline_slot = workflow_inlines
    change_form_template = "admin/workflows/workflow/change_form.html"

    @admin.display(description="input schema")
    def input_schema_redacted(self, obj) -> str:
        """The input schema, to whoever may not change the workflow: a credential typed into
        it (before that was refused) REDACTED, as in its steps' config."""
        return json.dumps(schema_shown(obj.input_schema), sort_keys=True, ensure_ascii=False)

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is None or self.has_change_permission(request, obj):
            return [name for name in fields if name != "input_schema_redacted"]
        return ["input_schema_redacted" if name == "input_schema" else name for name in fields]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "input_schema_redacted"]

    def get_urls(self):
        run = self.admin_site.admin_view(self.run_view)
        return [path("<path:object_id>/run/", run, name="workflows_workflow_run"),
                *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        workflow = self.get_object(request, object_id) if object_id else None
        if workflow is not None:
            extra["can_run"] = has_role(request, ACTORS, workflow.org_id)
            extra["run_url"] = reverse("admin:workflows_workflow_run", args=[workflow.pk])
        return super().change_view(request, object_id, form_url, extra)

    def run_view(self, request, object_id):
        """"New task": run the workflow by hand with a JSON input; members and admins."""
        workflow = self.get_object(request, object_id)
        if workflow is None:
            raise Http404("Not found.")
        self.require_role(request, ACTORS, workflow)
        form = RunForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                item = work_item_run(workflow=workflow, input=form.cleaned_data["input"],
                                     user=request.user, ip=client_ip(request))
            except ApplicationError as exc:
                errors = (exc.extra or {}).get("errors") or []
                form.add_error("input", exc.detail)
                for error in errors[:20]:
                    form.add_error("input", json.dumps(error))
            else:
                self.message_user(request, "Work item created.", messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:workflows_workitem_change", args=[item.pk]))
        context = {**self.admin_site.each_context(request), "title": f"Run {workflow.name}",
                   "opts": self.model._meta, "original": workflow, "form": form,
                   "workflow": workflow}
        return TemplateResponse(request, "admin/workflows/workflow/run.html", context)


class StepRunInline(ReadOnlyInlineMixin, ScopedInlineMixin, admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    verbose_name_plural = "step timeline (every attempt)"
    readonly_fields = ["step", "attempt", "status", "started_at", "finished_at", "took",
                       "waited", "output", "error"]
    fields = readonly_fields

    @admin.display(description="took")
    def took(self, obj):
        if obj.finished_at and obj.started_at:
            return f"{(obj.finished_at - obj.started_at).total_seconds():.1f} s"
        return "-"

    @admin.display(description="waited on")
    def waited(self, obj):
        return ", ".join(f"{k}: {v}" for k, v in (obj.state or {}).items()) or "-"


class ApprovalInline(StepRunInline):
    model = Approval
    verbose_name_plural = "approvals"
    readonly_fields = ["step", "decision", "decided_by", "decided_via", "decided_at", "comment"]
    fields = readonly_fields


# "Cancel selected": items canceled per request (about 10 ms each).
CANCEL_AT_ONCE = 500
CORRELATION_ID_MAX = WorkItem._meta.get_field("correlation_id").max_length


class WorkItemActionsMixin:
    """Approve/reject buttons on a waiting item's page and the cancel action."""

    change_form_template = "admin/workflows/workitem/decide_change_form.html"
    actions = ["cancel_selected"]

    def get_urls(self):
        decide = self.admin_site.admin_view(self.decide_view)
        return [path("<path:object_id>/decide/", decide, name="workflows_workitem_decide"),
                *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        pk = pk_or_none(WorkItem, object_id)
        item = WorkItem.objects.select_related("workflow").filter(pk=pk).first() \
            if pk else None
        extra = dict(extra_context or {})
        if item is not None and item.waiting_on == WorkItem.Waiting.APPROVAL and (
                item.status == WorkItem.Status.RUNNING) and not (
                item.waiting_detail or {}).get("decision") and has_role(
                request, ACTORS, item.workflow.org_id):  # the buttons only for who may decide
            steps = list(Step.objects.filter(workflow_id=item.workflow_id))
            if item.current_step < len(steps):
                extra["awaiting_approval"] = steps[item.current_step].name
                extra["decide_url"] = reverse("admin:workflows_workitem_decide",
                                              args=[item.pk])
        return super().change_view(request, object_id, form_url, extra)

    def decide_view(self, request: HttpRequest, object_id: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        item = get_object_or_404(WorkItem.objects.select_related("workflow"), pk=object_id)
        require_role(request, ACTORS, item, org_path="workflow__org")
        try:
            work_item_decide(item=item, decision=request.POST.get("decision", ""),
                             comment=request.POST.get("comment", "")[:2000],
                             user=request.user, ip=client_ip(request))
        except ApplicationError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
        else:
            # What happens next: a rejection fails the item (code `rejected`), it does not go on.
            self.message_user(request, (
                "Approved: the work item continues (its next step runs, or it completes)."
                if request.POST.get("decision") == "approve" else
                "Rejected: the work item fails with code 'rejected' (replay it if that was "
                "a mistake)."), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:workflows_workitem_change", args=[item.pk]))

    # Bounds itself: the oldest CANCEL_AT_ONCE, and says how many are left (a canceled item
    # leaves the selection's active ones, so running it again takes the next ones).
    @org_action(roles=ACTORS, at_once=None,
                description="Cancel selected work items (fail with code 'canceled')")
    def cancel_selected(self, request: HttpRequest, queryset):
        """Cancel the selection's pending and running items, oldest first, at most
        CANCEL_AT_ONCE per request: each is its own transaction (a row lock, the audit row,
        the callback), so "Select all" over a big history would outlast the request and end
        halfway. What is left is said, to run the action again."""
        active = queryset.filter(status__in=WorkItem.ACTIVE)
        batch = list(active.select_related("workflow").order_by("created_at", "pk")
                     [:CANCEL_AT_ONCE])
        canceled = 0
        for item in batch:
            try:
                work_item_cancel(item=item, user=request.user, reason="canceled in the admin",
                                 ip=client_ip(request))
                canceled += 1
            except ApplicationError:
                pass  # it finished meanwhile
        message = f"Canceled {canceled} work item(s)."
        if len(batch) == CANCEL_AT_ONCE and (left := active.count()):
            message += (f" {left} more of the selection are still pending or running: run "
                        "the action again to cancel the next ones.")
            self.message_user(request, message, messages.WARNING)
        else:
            self.message_user(request, message, messages.INFO)


@admin.register(WorkItem)
class WorkItemAdmin(ExtendedInlinesMixin, WorkItemReplayMixin, WorkItemActionsMixin,
                    OrgScopedAdmin):
    """Work history: read-only for everyone; approve/reject/cancel for admins and members."""

    org_path = "workflow__org"
    add_roles = change_roles = frozenset()
    admin_adds = False  # made by the product only
    action_roles = ACTORS
    list_display = ["id", "status", "workflow", "intake", "created_at", "duration", "caller",
                    "correlation_id"]
    list_filter = ["status", "workflow", "intake", "intake__team",
                   ("created_at", admin.DateFieldListFilter)]
    date_hierarchy = "created_at"
    querystring_fields = ("replay_batch",)  # a bulk replay's page links to its items
    search_fields = ["id", "correlation_id", "request_id"]
    list_select_related = ["workflow", "intake", "created_by_key"]
    inlines = [StepRunInline, ApprovalInline]
    inline_slot = workitem_inlines
    fieldsets = [
        (None, {"fields": ["id", "status", "workflow", "intake", "caller", "created_by_ip",
                           "correlation_id", "request_id", "created_at", "started_at",
                           "finished_at", "duration", "redacted_at"]}),
        ("Diagnosis", {"fields": ["diagnosis"]}),
        ("Input", {"fields": ["input_json"]}),
        ("Output or error", {"fields": ["output_json", "error_json"]}),
        ("Audit events", {"fields": ["audit_trail"]}),
    ]

    search_help_text = "A work id (looked up at once), or part of a correlation or request id."

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(took=ExpressionWrapper(
            F("finished_at") - F("created_at"), output_field=DurationField()))

    def get_search_results(self, request, queryset, search_term):
        """A whole work id or correlation id pasted in is an indexed read; the substring
        search of three columns reads every item in reach (0.5-1.0 s on a 200,000-item
        history, BENCHMARKS.md). Anything else (part of an id, a request id, a correlation
        id in another case) is searched as before."""
        exact = self._exact_match(queryset, search_term.strip())
        if exact is not None:
            return exact, False
        return super().get_search_results(request, queryset, search_term)

    @staticmethod
    def _exact_match(queryset, term: str):
        if not term or len(term) > CORRELATION_ID_MAX:
            return None
        try:
            work_id = uuid.UUID(term)
        except ValueError:
            work_id = None
        if work_id is not None and (found := queryset.filter(pk=work_id)).exists():
            return found
        found = queryset.filter(correlation_id=term)  # workitem_correlation
        return found if found.exists() else None

    def get_readonly_fields(self, request, obj=None):
        return [f for _, opts in self.fieldsets for f in opts["fields"]]

    @admin.display(description="duration", ordering="took")
    def duration(self, obj):
        if obj.finished_at is None:
            return "running" if obj.status == WorkItem.Status.RUNNING else "-"
        return f"{(obj.finished_at - obj.created_at).total_seconds():.1f} s"

    @admin.display(description="caller key")
    def caller(self, obj):
        key = obj.created_by_key
        if key is None:
            return "admin (New task)" if obj.correlation_id.startswith("admin:") else "-"
        return f"{key.label} ({key.display})"

    @admin.display(description="diagnosis")
    def diagnosis(self, obj):
        body = work_item_view(obj).body
        waiting = body.get("waiting_on")
        if not waiting:
            return format_html("<strong>{}</strong><br>{}", obj.status,
                               body.get("diagnosis") or "")
        # As the poll has it (JSON), as "Why is my poll stuck?" shows it: not Python's repr.
        return format_html("<strong>waiting on {}</strong> <code>{}</code><br>{}",
                           waiting.get("kind"), json.dumps(waiting, ensure_ascii=False),
                           body.get("diagnosis") or "")

    def _json(self, value):
        if value is None:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))

    @admin.display(description="input")
    def input_json(self, obj):
        return self._json(obj.input)

    @admin.display(description="output")
    def output_json(self, obj):
        return self._json(obj.output)

    @admin.display(description="error")
    def error_json(self, obj):
        return self._json(obj.error)

    @admin.display(description="audit events touching it")
    def audit_trail(self, obj):
        # Two indexed reads, not `object_id = …` on the audit log view: its derived rows'
        # object_id is computed from each work item, so that filter read every item of every
        # organization on each item page. The audit rows that name this item, and the
        # view's row derived from the item itself (whose id is the item's).
        events = sorted(
            [*AuditEvent.objects.filter(object_id=str(obj.pk)).order_by("created_at")[:200],
             *AuditLogEntry.objects.filter(pk=obj.pk)],
            key=lambda e: e.created_at)[:200]
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} <strong>{}</strong> by {} {}</li>",
            ((time_shown(e.created_at), e.event, e.actor_label or "system",
              audit_extra_text(e.extra) if e.extra else "")
             for e in events)))

    def has_delete_permission(self, request, obj=None):
        return False

    def decide_view(self, request, object_id):
        if self.get_object(request, object_id) is None:  # another org's item: 404
            raise Http404("Not found.")
        return super().decide_view(request, object_id)


@admin.register(Provider)
class ProviderAdmin(NumericHelpMixin, OrgScopedAdmin):
    list_display = ["name", "org", "model", "base_url_redacted", "concurrency_limit", "active"]
    list_filter = ["active", "org"]
    search_fields = ["name", "model"]
