import json

from django import forms
from django.contrib import admin, messages
from django.db.models import DurationField, ExpressionWrapper, F
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from auxot.admin_base import ACTORS, OrgScopedAdmin, ScopedInlineMixin, has_role
from auxot.errors import ApplicationError
from auxot.models import AuditEvent
from workflows import admin_actions
from workflows.admin_actions import WorkItemActionsMixin
from workflows.admin_replay import WorkItemReplayMixin
from workflows.models import Approval, Provider, Step, StepRun, Workflow, WorkItem
from workflows.presenters import work_item_view
from workflows.services import work_item_run


class StepInline(ScopedInlineMixin, admin.TabularInline):
    model = Step
    extra = 0


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
class WorkflowAdmin(OrgScopedAdmin):
    list_display = ["name", "org", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [StepInline]  # intakes/admin.py attaches its Intakes panel
    change_form_template = "admin/workflows/workflow/change_form.html"

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
            extra["add_intake_url"] = (reverse("admin:intakes_intake_add")
                                       + f"?workflow={workflow.pk}")
            extra["can_add_intake"] = self.has_change_permission(request, workflow)
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
                                     user=request.user, ip=admin_actions._client_ip(request))
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


class StepRunInline(ScopedInlineMixin, admin.TabularInline):
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

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ApprovalInline(StepRunInline):
    model = Approval
    verbose_name_plural = "approvals"
    readonly_fields = ["step", "decision", "decided_by", "decided_via", "decided_at", "comment"]
    fields = readonly_fields


@admin.register(WorkItem)
class WorkItemAdmin(WorkItemReplayMixin, WorkItemActionsMixin, OrgScopedAdmin):
    """Work history: read-only for everyone; approve/reject/cancel for admins and members."""

    org_path = "workflow__org"
    add_roles = change_roles = frozenset()
    action_roles = ACTORS
    list_display = ["id", "status", "workflow", "intake", "created_at", "duration", "caller",
                    "correlation_id"]
    list_filter = ["status", "workflow", "intake", "intake__team",
                   ("created_at", admin.DateFieldListFilter)]
    date_hierarchy = "created_at"
    search_fields = ["id", "correlation_id"]
    list_select_related = ["workflow", "intake", "created_by_key"]
    inlines = [StepRunInline, ApprovalInline]
    fieldsets = [
        (None, {"fields": ["id", "status", "workflow", "intake", "caller", "created_by_ip",
                           "correlation_id", "created_at", "started_at", "finished_at",
                           "duration"]}),
        ("Diagnosis", {"fields": ["diagnosis"]}),
        ("Input", {"fields": ["input_json"]}),
        ("Output or error", {"fields": ["output_json", "error_json"]}),
        ("Audit events", {"fields": ["audit_trail"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(took=ExpressionWrapper(
            F("finished_at") - F("created_at"), output_field=DurationField()))

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
        return format_html("<strong>{}</strong><br>{}", body.get("waiting_on") or obj.status,
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
        events = AuditEvent.objects.filter(object_id=str(obj.pk)).order_by("created_at")[:200]
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} <strong>{}</strong> by {} {}</li>",
            ((e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.event, e.actor_label or "system",
              json.dumps(e.extra, sort_keys=True, ensure_ascii=False) if e.extra else "")
             for e in events)))

    def has_delete_permission(self, request, obj=None):
        return False

    def decide_view(self, request, object_id):
        if self.get_object(request, object_id) is None:  # another org's item: 404
            raise Http404("Not found.")
        return super().decide_view(request, object_id)


admin.site.unregister(Provider)


@admin.register(Provider)
class ScopedProviderAdmin(OrgScopedAdmin, admin_actions.ProviderAdmin):
    pass
