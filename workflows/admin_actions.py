"""Work item actions in the admin (approve/reject buttons, cancel), kept out of admin.py so
the admin UI can be rebuilt around them: apply `WorkItemActionsMixin` to the WorkItem admin.
Also registers the Provider admin."""

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from auxot.admin_base import ACTORS, has_role, org_action, require_role
from auxot.errors import ApplicationError
from workflows.models import Provider, Step, WorkItem
from workflows.services import work_item_cancel, work_item_decide


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class WorkItemActionsMixin:
    change_form_template = "admin/workflows/workitem/decide_change_form.html"
    actions = ["cancel_selected"]

    def get_urls(self):
        decide = self.admin_site.admin_view(self.decide_view)
        return [path("<path:object_id>/decide/", decide, name="workflows_workitem_decide"),
                *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        item = WorkItem.objects.select_related("workflow").filter(pk=object_id).first() \
            if object_id else None
        extra = dict(extra_context or {})
        if item is not None and item.waiting_on == WorkItem.Waiting.APPROVAL and (
                item.status == WorkItem.Status.RUNNING) and has_role(
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
                             user=request.user, ip=_client_ip(request))
        except ApplicationError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
        else:
            verb = "Approved" if request.POST.get("decision") == "approve" else "Rejected"
            self.message_user(request, f"{verb}; the work item continues.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:workflows_workitem_change", args=[item.pk]))

    @org_action(roles=ACTORS,
                description="Cancel selected work items (fail with code 'canceled')")
    def cancel_selected(self, request: HttpRequest, queryset):
        canceled, skipped = 0, 0
        for item in queryset.select_related("workflow"):
            try:
                work_item_cancel(item=item, user=request.user, reason="canceled in the admin",
                                 ip=_client_ip(request))
                canceled += 1
            except ApplicationError:
                skipped += 1
        self.message_user(request, f"Canceled {canceled} work item(s); {skipped} already "
                                   "finished or not yours to cancel.", messages.INFO)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "org", "model", "base_url", "concurrency_limit", "active"]
    list_filter = ["active", "org"]
    search_fields = ["name", "model"]
