""""Why is my poll stuck?": paste the JSON a poll returned, get the diagnosis and links.

Only work items of the viewer's organization(s) are found; any other id gets the same
not-found message as an id that does not exist.
"""

import json
import re

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse

from auxot.admin_base import EVERYONE, has_role, org_ids_with
from workflows.models import Provider, WorkItem
from workflows.presenters import work_item_view
from workflows.services import worker_last_seen

NOT_FOUND = ("No work item of your organization matches that poll. Check that you pasted "
             "the whole JSON body (it has a work_id) and that you are signed in to the right "
             "organization.")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


class PollForm(forms.Form):
    poll = forms.CharField(label="Poll response (JSON)",
                           widget=forms.Textarea(attrs={"rows": 10, "cols": 90}))

    def clean_poll(self):
        text = self.cleaned_data["poll"].strip()
        if bare := UUID.fullmatch(text.strip('"')):  # the work id alone is enough
            return bare.group(0)
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno}.") \
                from None
        if not isinstance(body, dict):
            raise forms.ValidationError("Paste the JSON object the poll returned.")
        work_id = str(body.get("work_id") or body.get("id") or "")
        match = UUID.fullmatch(work_id) or UUID.search(str(body.get("status_url", "")))
        if not match:
            raise forms.ValidationError(_no_work_id(body))
        return match.group(0)


def _no_work_id(body: dict) -> str:
    """What to say of pasted JSON without a work id: an error answer (problem+json) means
    the poll itself was refused, which no work item can explain."""
    code, status = body.get("code"), body.get("status")
    if isinstance(code, str) and isinstance(status, int):
        detail = f" {body['detail']}" if isinstance(body.get("detail"), str) else ""
        return (f"That is an error answer (HTTP {status} {code}), not a work item: the request "
                f"itself was refused, before any work item was read.{detail} See "
                f"/v1/problems/{code} for what to check.")
    return "That JSON has no work_id: paste the whole body the poll returned, or the work id."


def poll_stuck(request):
    if not has_role(request, EVERYONE):
        raise PermissionDenied
    form = PollForm(request.POST or None)
    result, not_found = None, False
    if request.method == "POST" and form.is_valid():
        # Per object: only items of organizations where the user holds a role are found, so
        # another organization's id reads exactly like an unknown one.
        items = WorkItem.objects.select_related("workflow", "intake")
        if not request.user.is_superuser:
            items = items.filter(workflow__org_id__in=org_ids_with(request, EVERYONE))
        item = items.filter(pk=form.cleaned_data["poll"]).first()
        if item is None:
            not_found = True
        else:
            result = _explain(item)
    context = {**admin.site.each_context(request), "title": "Why is my poll stuck?",
               "form": form, "result": result, "not_found": NOT_FOUND if not_found else ""}
    return TemplateResponse(request, "admin/intakes/poll_stuck.html", context)


def _explain(item: WorkItem) -> dict:
    body = work_item_view(item).body
    waiting = body.get("waiting_on") or {}
    page = reverse("admin:workflows_workitem_change", args=[item.pk])
    links = [("Work item page (step timeline, attempts, audit events)", page)]
    kind = waiting.get("kind") if isinstance(waiting, dict) else None
    if kind == "approval" and not waiting.get("decision"):
        links.append(("Approve or reject it (buttons at the top of the work item page)", page))
    if kind == "provider" and waiting.get("provider"):
        provider = Provider.objects.filter(org_id=item.workflow.org_id,
                                           name=waiting["provider"]).first()
        if provider is not None:
            links.append((f"Provider '{provider.name}' (concurrency limit)", reverse(
                "admin:workflows_provider_change", args=[provider.pk])))
    beat = worker_last_seen()
    return {"item": item, "status": body.get("status"), "diagnosis": body.get("diagnosis"),
            "waiting": json.dumps(waiting, ensure_ascii=False) if waiting else "",
            "links": links,
            "worker": f"last worker heartbeat: {beat:%Y-%m-%d %H:%M:%S} UTC" if beat
            else "no worker heartbeat has ever been seen: is `manage.py qcluster` running?"}
