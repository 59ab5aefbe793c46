"""Replay in the admin: a Replay button on a failed item, the bulk action "Replay from failed
step", and the Failed work view (open failures grouped by workflow, step and error code, with
a one-click bulk replay behind a confirmation page and a progress page).

Apply `WorkItemReplayMixin` to the WorkItem admin. Bulk replays are ReplayBatch rows that
django-q2 works through (workflows/replay.py): a request only stores the batch.
"""

import uuid
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from auxot.admin_base import (
    ACTORS,
    EVERYONE,
    has_role,
    org_action,
    org_ids_with,
    pk_or_none,
    require_role,
)
from auxot.errors import ApplicationError
from auxot.http import client_ip
from auxot.models import Organization
from workflows.models import ReplayBatch, Step, Workflow, WorkItem
from workflows.replay import (
    FROM_START,
    REASON_MAX_CHARS,
    ReplayBatchRunning,
    failed_group_items,
    failed_work_groups,
    replay_batch_cap,
    replay_batch_create,
    replay_batch_ids,
    replay_plan,
    replay_refusal,
    replay_summary,
    replayable,
    work_item_replay,
)

MAX_DAYS = 90


def _days(request: HttpRequest) -> int:
    try:
        days = int(request.GET.get("days") or request.POST.get("days") or 0)
    except ValueError:
        days = 0
    return min(max(days, 1), MAX_DAYS) if days else settings.AUXOT_REPLAY_FAILED_DAYS


def _reason(request: HttpRequest) -> str:
    """Why the operator replays, as typed (the service keeps it storable and cut)."""
    return request.POST.get("reason", "").strip()


def _visible_orgs(request: HttpRequest) -> list[int] | None:
    return None if request.user.is_superuser else org_ids_with(request, EVERYONE)


class WorkItemReplayMixin:
    change_form_template = "admin/workflows/workitem/replay_change_form.html"
    change_list_template = "admin/workflows/workitem/replay_change_list.html"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("failed/", wrap(self.failed_work_view), name="workflows_workitem_failed"),
            path("failed/replay/", wrap(self.failed_group_replay_view),
                 name="workflows_workitem_failed_replay"),
            path("replay-batches/<uuid:batch_id>/", wrap(self.replay_batch_view),
                 name="workflows_workitem_replay_batch"),
            path("<path:object_id>/replay/", wrap(self.replay_view),
                 name="workflows_workitem_replay"),
            *super().get_urls(),
        ]

    def get_actions(self, request):
        actions = super().get_actions(request)
        if actions:  # empty for users who may act nowhere; org_action checks each object
            actions["replay_selected"] = self.get_action("replay_selected")
        return actions

    def lookup_allowed(self, lookup, value, request=None):
        # The progress page links to the items a bulk replay created.
        if lookup in ("replay_batch__id__exact", "replay_of__id__exact"):
            return True
        return super().lookup_allowed(lookup, value, request)

    # --- one item ----------------------------------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        pk = pk_or_none(WorkItem, object_id)
        item = WorkItem.objects.select_related("workflow", "replay_of").filter(
            pk=pk).first() if pk else None
        if item is not None:
            extra["replay_of"] = item.replay_of
            extra["replayed_by"] = list(item.replays.order_by("created_at")
                                        .values_list("pk", "status"))
            if not replay_refusal(item) and has_role(request, ACTORS, item.workflow.org_id):
                plan = replay_plan(item=item, start_over=False)
                extra["replay_url"] = reverse("admin:workflows_workitem_replay", args=[item.pk])
                extra["replay_resume"] = plan.resume_step
                extra["replay_carried"] = len(plan.carried)
                extra["reason_max"] = REASON_MAX_CHARS
        return super().change_view(request, object_id, form_url, extra)

    def replay_view(self, request: HttpRequest, object_id: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self.get_object(request, object_id)  # a malformed id or another org's item: 404
        item = get_object_or_404(WorkItem.objects.select_related("workflow__org"), pk=object_id)
        require_role(request, ACTORS, item, org_path="workflow__org")
        try:
            new = work_item_replay(item=item, start_over=request.POST.get("from") == FROM_START,
                                   user=request.user, ip=client_ip(request),
                                   reason=_reason(request))
        except ApplicationError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:workflows_workitem_change",
                                                args=[item.pk]))
        self.message_user(request, "Replay created; the original stays failed.",
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:workflows_workitem_change", args=[new.pk]))

    # --- bulk action -------------------------------------------------------------------
    # Not bounded here: the request writes one background batch per organization.
    @org_action(roles=ACTORS, description="Replay from failed step", at_once=None)
    def replay_selected(self, request: HttpRequest, queryset):
        """A confirmation page, then one background batch per organization: a selection
        of thousands never replays inside the request."""
        chosen = replayable(queryset)
        if request.POST.get("confirm") != "yes":
            total, count = queryset.count(), chosen.count()
            selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
            context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                       "title": "Replay from failed step", "count": count,
                       "refused": total - count, "steps": replay_summary(queryset),
                       "selected": selected, "select_across": request.POST.get("select_across"),
                       "query": request.GET.urlencode(), "reason_max": REASON_MAX_CHARS,
                       "action_checkbox_name": ACTION_CHECKBOX_NAME}
            return TemplateResponse(request, "admin/workflows/workitem/replay_confirm.html",
                                    context)
        by_org: dict[int, list] = defaultdict(list)
        for pk, org_id in chosen.values_list("pk", "workflow__org_id"):
            by_org[org_id].append(pk)
        if not by_org:
            self.message_user(request, "None of the selected items can be replayed (only "
                              "failed, not canceled items).", messages.WARNING)
            return None
        batches = []
        for org_id, ids in by_org.items():
            try:
                batches.append(replay_batch_create(
                    org=Organization.objects.get(pk=org_id), work_ids=ids, user=request.user,
                    ip=client_ip(request), label=f"{len(ids)} selected item(s)",
                    reason=_reason(request)))
            except ReplayBatchRunning as exc:
                self.message_user(request, exc.detail, messages.WARNING)
                batches.append(exc.batch)
            except ApplicationError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
                return None
            else:
                _left_out(self, request, len(ids), batches[-1])
        return HttpResponseRedirect(reverse("admin:workflows_workitem_replay_batch",
                                            args=[batches[0].pk]))

    # --- Failed work -------------------------------------------------------------------
    def failed_work_view(self, request: HttpRequest):
        if not has_role(request, EVERYONE):
            raise PermissionDenied
        days = _days(request)
        since = timezone.now() - timedelta(days=days)
        groups = failed_work_groups(org_ids=_visible_orgs(request), since=since)
        for group in groups:
            group["can_replay"] = has_role(request, ACTORS, group["org_id"])
        batches = ReplayBatch.objects.order_by("-created_at")
        if not request.user.is_superuser:
            batches = batches.filter(org_id__in=org_ids_with(request, EVERYONE))
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Failed work", "groups": groups, "days": days,
                   "day_choices": [1, 7, 30, MAX_DAYS], "batches": batches[:10],
                   "total": sum(group["count"] for group in groups)}
        return TemplateResponse(request, "admin/workflows/workitem/failed_work.html", context)

    def failed_group_replay_view(self, request: HttpRequest):
        """GET: the confirmation page for one group. POST with confirm: store the batch."""
        params = request.POST if request.method == "POST" else request.GET
        workflow = Workflow.objects.filter(pk=_uuid(params.get("workflow"))).first()
        if workflow is None or not (request.user.is_superuser or has_role(
                request, EVERYONE, workflow.org_id)):
            raise Http404("Not found.")
        require_role(request, ACTORS, workflow.org_id)
        days = _days(request)
        code, position = params.get("code", ""), params.get("position", "")
        items = failed_group_items(org_ids=_visible_orgs(request),
                                   since=timezone.now() - timedelta(days=days),
                                   workflow_id=workflow.pk, code=code, position=position)
        start_over = params.get("from") == FROM_START
        if request.method == "POST" and params.get("confirm") == "yes":
            ids = replay_batch_ids(items)
            try:
                batch = replay_batch_create(
                    org=workflow.org, work_ids=ids, user=request.user, start_over=start_over,
                    reason=_reason(request), ip=client_ip(request),
                    label=f"{workflow.name}: step {position or '-'} {code or 'no code'}")
                _left_out(self, request, len(ids), batch)
            except ReplayBatchRunning as exc:
                self.message_user(request, exc.detail, messages.WARNING)
                batch = exc.batch
            except ApplicationError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
                return HttpResponseRedirect(reverse("admin:workflows_workitem_failed"))
            return HttpResponseRedirect(reverse("admin:workflows_workitem_replay_batch",
                                                args=[batch.pk]))
        # What the replay will carry and run, as replay_plan decides it for the group's
        # first item (a group failed at one step: the same steps completed before it).
        sample = items.select_related("workflow").order_by().first()
        plan = replay_plan(item=sample, start_over=start_over) if sample else None
        steps = list(Step.objects.filter(workflow=workflow))
        count, cap = items.count(), replay_batch_cap()
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Replay failed work", "workflow": workflow, "code": code,
                   "position": position, "days": days, "count": count,
                   "now": min(count, cap), "later": max(count - cap, 0), "cap": cap,
                   "to_run": plan.to_run if plan else steps, "start_over": start_over,
                   "carried": plan.carried_steps if plan else [],
                   "reason_max": REASON_MAX_CHARS}
        return TemplateResponse(request, "admin/workflows/workitem/failed_replay_confirm.html",
                                context)

    def replay_batch_view(self, request: HttpRequest, batch_id):
        batch = ReplayBatch.objects.filter(pk=batch_id).first()
        if batch is None or not has_role(request, EVERYONE, batch.org_id):
            raise Http404("Not found.")
        percent = int(100 * batch.cursor / batch.total) if batch.total else 100
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Bulk replay", "batch": batch, "percent": percent,
                   "items_url": reverse("admin:workflows_workitem_changelist")
                   + f"?replay_batch__id__exact={batch.pk}"}
        return TemplateResponse(request, "admin/workflows/workitem/replay_batch.html", context)


def _left_out(admin, request: HttpRequest, asked: int, batch: ReplayBatch) -> None:
    if asked > batch.total:
        admin.message_user(request, f"{asked - batch.total} of these items are already being "
                           "replayed by another bulk replay; they were left out of this one.",
                           messages.WARNING)


def _uuid(value):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
