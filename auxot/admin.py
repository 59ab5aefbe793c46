import csv
import io
import uuid
from datetime import date, datetime, time, timedelta
from functools import cached_property
from urllib.parse import urlencode

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from auxot.admin_base import (
    ADMIN,
    AUDITOR,
    MANAGERS,
    OrgScopedAdmin,
    audit_extra_text,
    has_role,
    org_ids_with,
)
from auxot.errors import ApplicationError
from auxot.http import client_ip
from auxot.models import (
    AUDIT_LOG_DERIVED,
    AuditEvent,
    AuditLogEntry,
    Membership,
    Organization,
    Secret,
    Team,
)
from auxot.secrets import (
    secret_create,
    secret_delete,
    secret_hosts_check,
    secret_rotate,
    secret_update_hosts,
    secret_value_check,
)
from auxot.services import sign_in_failure_record

admin.site.site_header = "Auxot"
admin.site.site_title = "Auxot"
admin.site.index_title = "Settings → Intakes, keys, work history and audit log"


class SignInForm(AdminAuthenticationForm):
    """The admin's sign-in form. A correct password for an account the admin does not take
    (not staff, or inactive under a backend that lets inactive users authenticate) is
    refused by the form, after authentication succeeded: Django sends no
    `user_login_failed` then, so the refusal is audited here, with its reason."""

    def confirm_login_allowed(self, user):
        try:
            super().confirm_login_allowed(user)
        except ValidationError:
            sign_in_failure_record(
                username=user.get_username(),
                ip=client_ip(self.request) if self.request is not None else None,
                refused="inactive" if not user.is_active else "not_staff")
            raise


admin.site.login_form = SignInForm

NOBODY = frozenset()


@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin):
    org_path = "pk"
    list_display = ["name", "slug", "plan", "rate_limit_per_window", "created_at"]
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
    deletions_audited_elsewhere = True  # auxot/receivers.py: with its user or org too

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not obj.user.is_staff:  # the role alone does not open the admin's sign-in
            self.message_user(request, (
                f"The user {obj.user.get_username()} cannot sign in to the admin yet: tick "
                "Staff status on their user (Users → "
                f"{obj.user.get_username()}); the role decides the rest."), messages.WARNING)


EXPORT_CHUNK_ROWS = 1000  # rows per chunk of a streamed export


CSV_COLUMNS = ["created_at", "event", "actor_label", "actor_key_lookup", "object_type",
               "object_id", "ip", "org", "extra"]
# OWASP "CSV injection": a spreadsheet runs a cell starting with one of these as a formula.
# Labels, names and extras are tenant- or caller-controlled, so every cell is neutralised.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """The cell as text, with a leading `'` if a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


class AuditValuesFilter(admin.AllValuesFieldListFilter):
    """The values of `event` or `object_type` in the audit table (indexed, the user's
    organizations) and those the apps' derived rows carry (AUDIT_LOG_DERIVED), not a
    DISTINCT over the audit log view."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        rows = AuditEvent.objects.order_by()
        if not request.user.is_superuser:
            rows = rows.filter(org_id__in=org_ids_with(request, model_admin.view_roles))
        values = set(rows.values_list(field_path, flat=True).distinct())
        self.lookup_choices = sorted(filter(None, values | AUDIT_LOG_DERIVED[field_path]))


class DateRangeListFilter(admin.DateFieldListFilter):
    """The date presets plus a From / To (both days included, in the server's time zone):
    an auditor asks about a period, not only "this month"."""

    template = "admin/auxot/date_range_filter.html"
    since, until = "date_from", "date_to"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.date_from = (params.get(self.since) or [""])[-1]
        self.date_to = (params.get(self.until) or [""])[-1]
        self.kept_params = [(name, value) for name, value in request.GET.items()
                            if name not in {self.since, self.until, "p"}
                            and not name.startswith(field_path)]
        super().__init__(field, request, params, model, model_admin, field_path)

    def expected_parameters(self):
        return [*super().expected_parameters(), self.since, self.until]

    def _day(self, name: str, value: str, after: int = 0):
        try:  # the day after 9999-12-31 is an OverflowError, not a ValueError
            day = date.fromisoformat(value) + timedelta(days=after)
        except (ValueError, OverflowError):
            raise IncorrectLookupParameters(f"{name}: not a date (YYYY-MM-DD)") from None
        return timezone.make_aware(datetime.combine(day, time.min))

    def queryset(self, request, queryset):
        bounds = {}
        for name, lookup, after in ((self.since, "gte", 0), (self.until, "lt", 1)):
            values = self.used_parameters.pop(name, None) or [""]
            value = values[-1] if isinstance(values, list) else values
            if value:
                bounds[f"{self.field_path}__{lookup}"] = self._day(name, value, after)
        return super().queryset(request, queryset.filter(**bounds))


class CappedCountPaginator(Paginator):
    """Counts at most `cap` + 1 rows (a LIMIT inside the COUNT): the audit log's exact count
    read a large tenant's whole history on every page, filter and search. The page says
    "more than 10,000" then; dates and filters narrow it (the pagination template)."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[:self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap

    def validate_number(self, number):
        if not self.capped:
            return super().validate_number(number)
        try:  # past the cap: any page from 1 (its rows may be none)
            number = int(number)
        except (TypeError, ValueError):
            raise PageNotAnInteger("That page number is not an integer") from None
        if number < 1:
            raise EmptyPage("That page number is less than 1")
        return number

    def page(self, number):
        """Past the cap a page is its OFFSET's rows (possibly none), not bounded by the
        count: a link to page 1,949 keeps working."""
        if not self.capped:
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        return self._get_page(self.object_list[bottom:bottom + self.per_page], number, self)


@admin.register(AuditEvent)
class AuditEventAdmin(OrgScopedAdmin):
    """Append-only: nobody adds, changes or deletes here (and PostgreSQL refuses it too)."""

    list_display = ["created_at", "event", "actor_link", "object_link", "ip"]
    # The log is a view over the audit table and every accepted trigger's work item: each
    # DISTINCT or COUNT over it reads every work item of the organizations in reach. So the
    # filters' choices come from the audit table (`AuditValuesFilter`), there is no date
    # hierarchy (its DISTINCT years, months and days), no count of the unfiltered log, and
    # the actor is searched, not listed (thousands of distinct labels).
    list_filter = [("event", AuditValuesFilter), ("created_at", DateRangeListFilter),
                   ("object_type", AuditValuesFilter)]
    # The actor's and the object's links (their columns) filter the list on them.
    querystring_fields = ("actor_label", "actor_key_lookup", "object_id")
    show_full_result_count = False
    paginator = CappedCountPaginator
    search_fields = ["object_id", "actor_label", "actor_key_lookup", "event"]
    view_roles = frozenset({ADMIN, AUDITOR})
    add_roles = change_roles = delete_roles = action_roles = NOBODY
    change_list_template = "admin/auxot/auditevent/change_list.html"
    fields = ["created_at", "event", "org", "actor_user", "actor_label", "actor_key_lookup",
              "object_type", "object_id", "ip", "extra_shown"]
    readonly_fields = fields

    @admin.display(description="extra")
    def extra_shown(self, obj: AuditEvent) -> str:
        return audit_extra_text(obj.extra)

    def get_queryset(self, request):
        """The audit log view (AuditLogEntry, same columns): the audit rows and what the
        apps add to it without a row of their own (each accepted trigger, from its item)."""
        queryset = AuditLogEntry._default_manager.get_queryset()
        ordering = self.get_ordering(request)
        if ordering:
            queryset = queryset.order_by(*ordering)
        return self.scope(request, queryset)

    def get_search_results(self, request, queryset, search_term):
        """An id (a work item's, say) is looked up exactly, in two indexed reads: the view's
        row with that id and the audit rows about that object. A substring search of the
        view reads every work item of the organizations in reach."""
        try:
            target = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        # The newest rows about it, as many as the list counts (an intake's rejections
        # can be many): the page says "more than" past them, as for any list.
        about = AuditEvent.objects.filter(object_id=str(target)).order_by("-created_at")
        ids = [*AuditLogEntry.objects.filter(pk=target).values_list("pk", flat=True),
               *about.values_list("pk", flat=True)[:self.paginator.cap + 1]]
        return queryset.filter(pk__in=ids), False

    # Nobody, superusers included: the log is append-only.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="actor", ordering="actor_label")
    def actor_link(self, obj: AuditEvent) -> str:
        """The actor, linked to this list filtered on them (their other events)."""
        name, value = ("actor_key_lookup", obj.actor_key_lookup) if obj.actor_key_lookup \
            else ("actor_label", obj.actor_label)
        if not value:
            return obj.actor_label or "-"
        return format_html('<a href="?{}" title="Events by this actor">{}</a>',
                           urlencode({name: value}), obj.actor_label or value)

    @admin.display(description="object")
    def object_link(self, obj: AuditEvent) -> str:
        """The object's page (when it has one) and its events (this list, filtered)."""
        text = f"{obj.object_type} {obj.object_id}".strip()
        if not obj.object_id:
            return text
        events = format_html(' <a href="?{}" title="Events about this object">(events)</a>',
                             urlencode({"object_type": obj.object_type,
                                        "object_id": obj.object_id}))
        target = self._object_admin_url(obj)
        if target:
            return format_html('<a href="{}">{}</a>{}', target, text, events)
        return format_html("{}{}", text, events)

    def _object_admin_url(self, obj: AuditEvent) -> str:
        """The audited object's admin page, found through the admin registry: the core names
        no other app's pages. "" when its model has no admin page (or no longer exists)."""
        if not obj.object_id:
            return ""
        try:
            model = apps.get_model(obj.object_type)
        except (LookupError, ValueError):
            return ""
        if not self.admin_site.is_registered(model):
            return ""
        opts = model._meta
        return reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                       args=[obj.object_id])

    def get_urls(self):
        export = self.admin_site.admin_view(self.export_csv)
        return [path("export.csv", export, name="auxot_auditevent_export"), *super().get_urls()]

    def export_csv(self, request):
        """The changelist's current filters, streamed as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        # Per object: the changelist queryset holds only rows of organizations where the user
        # is an admin or auditor, whatever filters the query string names.
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:  # `?created_at__year=abc`: as the list answers it
            meta = self.model._meta
            return HttpResponseRedirect(reverse(
                f"admin:{meta.app_label}_{meta.model_name}_changelist") + f"?{ERROR_FLAG}=1")
        # Tuples, not model instances, and a chunk per EXPORT_CHUNK_ROWS rows, not per row:
        # the per-row Python was most of a large export's time (bench/admin_scale.py).
        rows = changelist.get_queryset(request).values_list(
            "created_at", "event", "actor_label", "actor_key_lookup", "object_type",
            "object_id", "ip", "org__name", "extra").iterator(chunk_size=2000)

        def stream():
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            buffer.write("\ufeff")  # a UTF-8 BOM: spreadsheet apps then decode non-ASCII right
            writer.writerow(CSV_COLUMNS)
            for count, (created_at, *cells, extra) in enumerate(rows, start=1):
                writer.writerow([created_at.isoformat(),
                                 *map(csv_cell, cells), csv_cell(audit_extra_text(extra))])
                if count % EXPORT_CHUNK_ROWS == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()

        response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="auxot-audit.csv"'
        return response


class SecretForm(forms.ModelForm):
    """The value is write-only: a password field that never renders what is stored."""

    value = forms.CharField(
        required=False, strip=False, label="Value",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: never shown again. On an existing secret, leave empty to keep "
                  "the current value, or enter a new one to rotate it.")
    hosts = forms.CharField(
        label="Allowed hosts", widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="One per line: the hosts this value may be sent to (api.example.com, or "
                  "*.example.com for its subdomains). A request to any other host fails with "
                  "secret_host_refused and sends nothing.")

    class Meta:
        model = Secret
        fields = ["org", "name"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["hosts"].initial = "\n".join(self.instance.allowed_hosts)

    def clean_value(self):
        value = self.cleaned_data["value"]
        if self.instance.pk and value == "":
            return ""
        return secret_value_check(value)

    def clean_hosts(self):
        raw = self.cleaned_data["hosts"].replace(",", "\n").splitlines()
        return secret_hosts_check([line for line in raw if line.strip()])


@admin.register(Secret)
class SecretAdmin(OrgScopedAdmin):
    """Admins create, rotate, re-bind and delete; members and auditors see names and hosts."""
    admin_audit = False  # its services write the audit trail (and its deletions' receivers)

    form = SecretForm
    list_display = ["name", "org", "hosts_list", "created_by", "created_at", "rotated_at"]
    list_filter = ["org"]
    search_fields = ["name"]
    list_select_related = ["org", "created_by"]
    delete_roles = MANAGERS
    # No bulk delete: each deletion goes through secret_delete from the secret's own page,
    # where the role is checked against that secret's organization and the change audited.
    actions = None
    FACTS = ["created_by", "created_at", "rotated_at"]

    @method_decorator(sensitive_post_parameters("value"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        """The value never reaches an error report (mail, Sentry) of a failing save."""
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["org", "name", "value", "hosts"]
        if self.has_change_permission(request, obj):
            return ["org", "name", "value", "hosts", *self.FACTS]
        return ["org", "name", "hosts_list", *self.FACTS]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["org", "name", "hosts_list", *self.FACTS]  # renaming would break references

    @admin.display(description="allowed hosts")
    def hosts_list(self, obj: Secret) -> str:
        return ", ".join(obj.allowed_hosts)

    def save_model(self, request, obj, form, change):
        data, ip = form.cleaned_data, client_ip(request)
        try:
            if not change:
                if not has_role(request, MANAGERS, data["org"].pk):
                    raise PermissionDenied
                created = secret_create(org=data["org"], name=data["name"], value=data["value"],
                                        allowed_hosts=data["hosts"], actor=request.user, ip=ip)
                obj.pk, obj._state.adding, obj._state.db = created.pk, False, created._state.db
                return
            fresh = Secret.objects.select_related("org").get(pk=obj.pk)
            if data["value"]:
                secret_rotate(secret=fresh, value=data["value"], actor=request.user, ip=ip)
            if data["hosts"] != fresh.allowed_hosts:
                secret_update_hosts(secret=fresh, allowed_hosts=data["hosts"],
                                    actor=request.user, ip=ip)
        except ApplicationError as exc:
            # The form checked the same rules; a race lands here as a message, never a 500.
            self.message_user(request, exc.detail, messages.ERROR)

    def delete_model(self, request, obj):
        secret_delete(secret=obj, actor=request.user, ip=client_ip(request))

    # The services write the audit trail; Django's own history would only duplicate it.
    def log_addition(self, request, obj, message):
        pass

    def log_change(self, request, obj, message):
        pass

    def log_deletion(self, request, obj, object_repr):
        pass

    def log_deletions(self, request, queryset):
        pass
