"""Settings → Intakes: list, add (via intake_create), detail with snippets, deactivate.

IntakeAdmin is composed here from OrgScopedAdmin and the callback mixin (admin_callbacks.py);
the inlines this app adds to the engine's pages are handed over by `engine_admin_extend`.
"""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.db.models import F, Func, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from auxot.admin_base import (
    MANAGERS,
    OBJECTS_AT_ONCE,
    OrgScopedAdmin,
    ReadOnlyInlineMixin,
    ScopedInlineMixin,
    bulk_message,
    each_still_there,
    org_action,
)
from auxot.errors import ApplicationError, ObjectGoneError
from auxot.http import client_ip
from auxot.timefmt import shown as time_shown
from intakes.admin_callbacks import (
    CALLBACK_ACTIONS,
    CALLBACK_READONLY,
    IntakeCallbacksAdminMixin,
    WorkItemCallbackInline,
)
from intakes.models import Intake
from intakes.services import (
    INTAKE_EDITABLE,
    INTAKE_SETTINGS,
    intake_create,
    intake_set_active,
    intake_update,
)
from intakes.snippets import intake_snippets, public_base_url
from workflows.models import WorkItem

RECENT_WORK = 10


class IntakeForm(forms.ModelForm):
    class Meta:
        model = Intake
        fields = ["workflow", "name", "team", "callback_url", "rate_limit_per_window",
                  "payload_retention_days", "item_retention_days", "redact_paths"]

    def clean(self):
        data = super().clean()
        workflow, team = data.get("workflow") or self.instance_workflow(), data.get("team")
        if team is not None and workflow is not None:
            org = workflow.org
            if team.org_id != org.pk:
                self.add_error("team", "That team belongs to another organization.")
            elif refusal := org.teams_refusal():
                self.add_error("team", f"{refusal} Leave the team empty.")
        return data

    def instance_workflow(self):
        return self.instance.workflow if self.instance.workflow_id else None


@admin.register(Intake)
class IntakeAdmin(IntakeCallbacksAdminMixin, OrgScopedAdmin):
    """Writes go through the services (audited); `active` only through the confirm page."""
    admin_audit = False  # its services write the audit trail (and its deletions' receivers)

    form = IntakeForm
    list_display = ["name", "workflow", "team", "active", "created_by", "last_triggered",
                    "accepted_24h", "failed_24h"]
    list_filter = ["active", "workflow", "team"]
    search_fields = ["id", "name"]
    list_select_related = ["workflow", "team__org", "created_by"]
    actions = ["deactivate_selected", "reactivate_selected", *CALLBACK_ACTIONS]
    change_form_template = "admin/intakes/intake/change_form.html"

    def save_model(self, request, obj, form, change):
        try:
            if change:
                self._update(request, obj, form)
            else:
                self._create(request, obj, form.cleaned_data)
        except ApplicationError as exc:
            # The form validated the same rules; a race lands here as a message, never a 500.
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.signing_secret_stash(request, obj)

    def _create(self, request, obj: Intake, data: dict) -> None:
        workflow = data["workflow"]
        self.require_role(request, MANAGERS, workflow)
        created = intake_create(org=workflow.org, workflow=workflow, name=data["name"],
                                team=data.get("team"), created_by=request.user,
                                callback_url=data.get("callback_url", ""),
                                options={f: data[f] for f in INTAKE_SETTINGS if f in data},
                                ip=client_ip(request))
        # Django's add view goes on with `obj` (redirect, message): make it the stored row.
        obj.pk = created.pk
        obj.refresh_from_db()
        obj.signing_secret = created.signing_secret

    def _update(self, request, obj: Intake, form) -> None:
        fresh = Intake.objects.select_related("org").filter(pk=obj.pk).first()
        if fresh is None:
            raise ObjectGoneError(obj)
        intake_update(intake=fresh, actor=request.user, ip=client_ip(request),
                      changes={f: form.cleaned_data[f] for f in form.changed_data
                               if f in INTAKE_EDITABLE})
        obj.refresh_from_db()

    def log_addition(self, request, obj, message):
        pass  # the services write the audit trail

    def log_change(self, request, obj, message):
        pass

    def get_queryset(self, request):
        # Per intake, on its (intake, -created_at) index: a join and GROUP BY over the work
        # item table read every intake's whole history before the page's limit applied.
        since = timezone.now() - timedelta(hours=24)
        items = WorkItem.objects.filter(intake=OuterRef("pk")).order_by()
        recent = items.filter(created_at__gte=since).values("intake")

        def counted(rows):
            return Coalesce(Subquery(rows.annotate(n=Func(F("pk"), function="COUNT",
                                                           output_field=IntegerField()))
                                     .values("n")), 0)

        return super().get_queryset(request).annotate(
            last_triggered_at=Subquery(items.order_by("-created_at").values("created_at")[:1]),
            accepted_count=counted(recent),
            failed_count=counted(recent.filter(status=WorkItem.Status.FAILED)))

    @admin.display(description="last triggered", ordering="last_triggered_at")
    def last_triggered(self, obj):
        return obj.last_triggered_at or "never"

    @admin.display(description="accepted 24 h", ordering="accepted_count")
    def accepted_24h(self, obj):
        return obj.accepted_count

    @admin.display(description="failed 24 h", ordering="failed_count")
    def failed_24h(self, obj):
        return obj.failed_count

    def get_fieldsets(self, request, obj=None):
        main = ["workflow", "name", "team"] if obj is None else [
            "intake_id", "workflow", "name", "team", "active", "created_by", "created_at",
            "deactivated_at", "rate_limit_per_window", "recent_work"]
        callbacks = ["callback_url"] if obj is None else ["callback_url", *CALLBACK_READONLY]
        retention = ["payload_retention_days", "item_retention_days", "redact_paths"]
        return [(None, {"fields": main}), ("Callbacks", {"fields": callbacks}),
                ("Retention", {"fields": retention})]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += ["intake_id", "workflow", "active", "created_by", "created_at",
                       "deactivated_at", "recent_work"]
        return fields

    @admin.display(description="intake id")
    def intake_id(self, obj):
        return format_html('<code id="intake-id">{}</code> <button type="button" '
                           'class="button" data-copy="intake-id">Copy</button>', obj.pk)

    @admin.display(description="recent work items")
    def recent_work(self, obj):
        items = WorkItem.objects.filter(intake=obj).order_by("-created_at")[:RECENT_WORK]
        rows = format_html_join("", '<li><a href="{}">{}</a> {} · {}</li>', (
            (reverse("admin:workflows_workitem_change", args=[i.pk]), i.pk, i.status,
             time_shown(i.created_at)) for i in items))
        history = reverse("admin:workflows_workitem_changelist") + f"?intake__id__exact={obj.pk}"
        return format_html('<ul id="recent-work">{}</ul><a href="{}">All work of this intake</a>',
                           rows or format_html("<li>{}</li>", "none yet"), history)

    def get_urls(self):
        confirm = self.admin_site.admin_view(self.set_active_view)
        return [path("<path:object_id>/active/<str:state>/", confirm,
                     name="intakes_intake_set_active"), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        intake = self.get_object(request, object_id)
        if intake is not None:
            extra["snippets"] = intake_snippets(base_url=public_base_url(request),
                                                intake_id=str(intake.pk))
            if request.method == "GET" and not intake.workflow.active:
                # Callers get the same 404 as for an unknown intake: say why here.
                name = intake.workflow.name
                self.message_user(request, (
                    f"Its workflow “{name}” is deactivated: every caller gets 404 on this "
                    f"intake until it is active again (Workflows → {name} → Active)."),
                    messages.WARNING)
            if self.has_change_permission(request, intake):
                state = "off" if intake.active else "on"
                extra["toggle_url"] = reverse("admin:intakes_intake_set_active",
                                              args=[intake.pk, state])
                extra["toggle_label"] = "Deactivate" if intake.active else "Reactivate"
        return super().change_view(request, object_id, form_url, extra)

    # --- deactivate / reactivate: single (confirm page) and bulk (action + confirm) -------
    def _confirm(self, request, intakes, active: bool, action: str | None):
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": ("Reactivate" if active else "Deactivate") + " intakes",
                   "intakes": intakes, "active": active, "action": action}
        return TemplateResponse(request, "admin/intakes/intake/set_active_confirm.html",
                                context)

    def _apply(self, request, intakes, active: bool) -> int | None:
        """Returns how many changed; None when every one was deleted by someone else since
        the page read them (each says so)."""
        applied, gone = each_still_there(intakes, lambda intake: intake_set_active(
            intake=intake, active=active, actor=request.user, ip=client_ip(request)))
        done = sum(changed for _intake, changed in applied)
        verb = "Reactivated" if active else "Deactivated"
        note = "" if active else " They answer 404 from now on."
        bulk_message(self, request, f"{verb} {done} intake(s).{note}", gone)
        return None if gone and gone == len(intakes) else done

    def set_active_view(self, request, object_id, state):
        intake = self.get_object(request, object_id)
        if intake is None or state not in ("on", "off"):
            raise Http404("Not found.")
        self.require_role(request, MANAGERS, intake)
        active = state == "on"
        if request.method == "POST":
            if self._apply(request, [intake], active) is None:  # deleted meanwhile
                return HttpResponseRedirect(reverse("admin:intakes_intake_changelist"))
            return HttpResponseRedirect(reverse("admin:intakes_intake_change",
                                                args=[intake.pk]))
        return self._confirm(request, [intake], active, None)

    def _bulk(self, request, queryset, active: bool, action: str):
        intakes = list(queryset.select_related("org"))
        if request.POST.get("confirmed") == "yes":
            self._apply(request, intakes, active)
            return None
        return self._confirm(request, intakes, active, action)

    @org_action(roles=MANAGERS, at_once=OBJECTS_AT_ONCE,
                description="Deactivate selected intakes (they answer 404 at once)")
    def deactivate_selected(self, request, queryset):
        return self._bulk(request, queryset, False, "deactivate_selected")

    @org_action(roles=MANAGERS, description="Reactivate selected intakes",
                at_once=OBJECTS_AT_ONCE)
    def reactivate_selected(self, request, queryset):
        return self._bulk(request, queryset, True, "reactivate_selected")


# What an intake is, in the words the tutorial's Path B promises for this panel's tooltip.
INTAKE_TOOLTIP = ("Webhook URLs external services can call to start this workflow: "
                  "POST /v1/intake/{intake_id} with an API key.")


class IntakesPanel(ReadOnlyInlineMixin, ScopedInlineMixin, admin.TabularInline):
    """Path B: the workflow page lists its intakes; “Add intake” there prefills the form."""

    model = Intake
    verbose_name_plural = "intakes"
    fields = ["intake_link", "team", "active", "created_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    template = "admin/intakes/intakes_panel.html"

    def get_formset(self, request, obj=None, **kwargs):
        # "Add intake" (prefilled with this workflow) sits under the panel, for whoever may
        # change the workflow: the link is this app's, the workflow's page does not know it.
        kwargs.setdefault("help_texts", {"intake_link": INTAKE_TOOLTIP})  # the column's tooltip
        formset = super().get_formset(request, obj, **kwargs)
        formset.add_intake_url = None
        formset.add_intake_tooltip = INTAKE_TOOLTIP
        if obj is not None and self._parent_allows(request, obj):
            formset.add_intake_url = (reverse("admin:intakes_intake_add")
                                      + f"?workflow={obj.pk}")
        return formset

    @admin.display(description="intake")
    def intake_link(self, obj):
        return format_html('<a href="{}">{}</a>',
                           reverse("admin:intakes_intake_change", args=[obj.pk]), obj.name)


def engine_admin_extend() -> None:
    """Hand the engine's admin pages the inlines this app owns: the intakes panel on a
    workflow, the callback delivery log on a work item, through the slots the workflows
    admin offers. Called once from IntakesConfig.ready(); `workflows` never imports
    `intakes`."""
    from workflows.admin import workflow_inlines, workitem_inlines

    workflow_inlines.add(IntakesPanel)
    workitem_inlines.add(WorkItemCallbackInline)
