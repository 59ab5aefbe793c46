import csv
import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.urls import path, reverse
from django.utils.html import format_html

from auxot.admin_base import ADMIN, AUDITOR, OrgScopedAdmin
from auxot.models import AuditEvent, Membership, Organization, Team

admin.site.site_header = "Auxot"
admin.site.site_title = "Auxot"
admin.site.index_title = "Settings → Intakes, keys, work history and audit log"

NOBODY = frozenset()


@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin):
    org_path = "pk"
    list_display = ["name", "slug", "plan", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    view_roles = frozenset({ADMIN, AUDITOR})
    add_roles = change_roles = NOBODY  # plans and orgs: superusers only


@admin.register(Team)
class TeamAdmin(OrgScopedAdmin):
    list_display = ["name", "org"]


@admin.register(Membership)
class MembershipAdmin(OrgScopedAdmin):
    list_display = ["user", "org", "role"]
    list_filter = ["role"]
    filter_horizontal = ["teams"]
    view_roles = frozenset({ADMIN, AUDITOR})
    add_roles = change_roles = NOBODY  # who is in an org: superusers only


class _Echo:
    def write(self, value):
        return value


CSV_COLUMNS = ["created_at", "event", "actor_label", "actor_key_lookup", "object_type",
               "object_id", "ip", "org", "extra"]
# OWASP "CSV injection": a spreadsheet runs a cell starting with one of these as a formula.
# Labels, names and extras are tenant- or caller-controlled, so every cell is neutralised.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """The cell as text, with a leading `'` if a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


@admin.register(AuditEvent)
class AuditEventAdmin(OrgScopedAdmin):
    """Append-only: nobody adds, changes or deletes here (and PostgreSQL refuses it too)."""

    list_display = ["created_at", "event", "actor_label", "object_link", "ip"]
    list_filter = ["event", ("created_at", admin.DateFieldListFilter), "object_type",
                   "actor_label"]
    search_fields = ["object_id", "actor_label", "actor_key_lookup", "event"]
    date_hierarchy = "created_at"
    view_roles = frozenset({ADMIN, AUDITOR})
    add_roles = change_roles = delete_roles = action_roles = NOBODY
    change_list_template = "admin/auxot/auditevent/change_list.html"
    fields = ["created_at", "event", "org", "actor_user", "actor_label", "actor_key_lookup",
              "object_type", "object_id", "ip", "extra"]
    readonly_fields = fields

    # Nobody, superusers included: the log is append-only.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="object")
    def object_link(self, obj: AuditEvent) -> str:
        target = {"workflows.workitem": "admin:workflows_workitem_change",
                  "intakes.intake": "admin:intakes_intake_change",
                  "apikeys.apikey": "admin:apikeys_apikey_change"}.get(obj.object_type)
        if target and obj.object_id:
            return format_html('<a href="{}">{} {}</a>', reverse(target, args=[obj.object_id]),
                               obj.object_type, obj.object_id)
        return f"{obj.object_type} {obj.object_id}".strip()

    def get_urls(self):
        export = self.admin_site.admin_view(self.export_csv)
        return [path("export.csv", export, name="auxot_auditevent_export"), *super().get_urls()]

    def export_csv(self, request):
        """The changelist's current filters, streamed as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        # Per object: the changelist queryset holds only rows of organizations where the user
        # is an admin or auditor, whatever filters the query string names.
        changelist = self.get_changelist_instance(request)
        rows = changelist.get_queryset(request).select_related("org").iterator(chunk_size=500)
        writer = csv.writer(_Echo())

        def stream():
            yield "\ufeff"  # a UTF-8 BOM: spreadsheet apps then decode non-ASCII correctly
            yield writer.writerow(CSV_COLUMNS)
            for e in rows:
                yield writer.writerow([csv_cell(value) for value in (
                    e.created_at.isoformat(), e.event, e.actor_label, e.actor_key_lookup,
                    e.object_type, e.object_id, e.ip, e.org.name if e.org else "",
                    json.dumps(e.extra, sort_keys=True, ensure_ascii=False))])

        response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="auxot-audit.csv"'
        return response
