from django.contrib import admin

from workflows.admin_actions import WorkItemActionsMixin
from workflows.models import Step, StepRun, Workflow, WorkItem


class StepInline(admin.TabularInline):
    model = Step
    extra = 0


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ["name", "org", "active", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [StepInline]


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    readonly_fields = ["step", "attempt", "status", "started_at", "finished_at", "output", "error"]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WorkItem)
class WorkItemAdmin(WorkItemActionsMixin, admin.ModelAdmin):
    list_display = ["id", "workflow", "intake", "status", "created_at", "finished_at"]
    list_filter = ["status", "workflow"]
    search_fields = ["id", "correlation_id"]
    inlines = [StepRunInline]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
