"""Callback admin: the delivery log, "Redeliver now", "Send test callback", secret rotation,
endpoint health ("endpoint failing since …" on intakes and deliveries; the endpoint list,
for superusers only, since one endpoint may serve several organizations).

`IntakeCallbacksAdminMixin` is composed into IntakeAdmin (admin.py); `WorkItemCallbackInline`
is handed to the engine's WorkItemAdmin by `intakes.admin.engine_admin_extend`, so
`workflows` never imports `intakes`.
"""

import functools
import operator
import uuid
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.http import HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
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
    ShownOnce,
    bulk_message,
    each_still_there,
    has_role,
    org_action,
    org_ids_with,
)
from auxot.http import client_ip
from auxot.models import Organization
from auxot.outbound import RefusedDestination, url_check, url_redact
from auxot.timefmt import shown as time_shown
from intakes.callbacks import (
    ORG_MARK,
    callback_delivery_redeliver,
    callback_test_send,
    endpoint_circuit_close,
    endpoint_key,
    endpoint_label,
    endpoint_shared,
    intake_callback_enable,
    intake_signing_secret_rotate,
    redeliver_refusal,
)
from intakes.models import CallbackAttempt, CallbackDelivery, CallbackEndpoint, Intake

RECENT_DELIVERIES = 10
# Actions bounded below `OBJECTS_AT_ONCE` (`org_action`'s at_once; a larger selection is
# refused whole): the new signing secrets are shown once, all on one page.
ROTATE_AT_ONCE = 50
# "Send test callback" waits for each receiver in the request (up to the callback timeout,
# 5 s by default): this many intakes at most, 25 s at worst, under gunicorn's 60 s.
TEST_CALLBACKS_AT_ONCE = 5

# A new or rotated signing secret crosses one redirect (a reload adds no second intake and
# rotates nothing), as a new API key's token does. Never in a URL.
NEW_SECRETS = ShownOnce("auxot_new_signing_secret", purpose="admin-new-signing-secret",
                        within=300)


def _delivery_link(delivery: CallbackDelivery) -> str:
    url = reverse("admin:intakes_callbackdelivery_change", args=[delivery.pk])
    return format_html('<a href="{}">{}</a>', url, delivery.webhook_id)


def endpoint_health(key: str) -> str:
    """"Endpoint failing since …" while its breaker is open; "" when it is healthy. Shows
    no error text: it may quote the receiver (superusers see it under Callback endpoints)."""
    endpoint = CallbackEndpoint.objects.filter(key=key, open_until__isnull=False).first() \
        if key else None
    if endpoint is None:
        return ""
    return format_html(
        '<strong style="color:#ba2121">Endpoint failing since {}</strong> ({} failed '
        "attempts in a row): deliveries to {} are paused until {}, then one probe attempt "
        "at a time; waiting deliveries keep their attempt numbers.",
        f"{endpoint.failing_since:%Y-%m-%d %H:%M:%S UTC}", endpoint.consecutive_failures,
        endpoint_label(key),
        f"{endpoint.open_until:%Y-%m-%d %H:%M:%S UTC}")


# --- CallbackDelivery: the log, per work item and per intake -----------------------------

class CallbackAttemptInline(ReadOnlyInlineMixin, ScopedInlineMixin, admin.TabularInline):
    """The attempts on a delivery's page: whoever may view the delivery sees them (Django's
    model permissions, which org roles do not use, hid them from everyone but superusers);
    nobody edits them."""

    model = CallbackAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "url", "status_code", "latency_ms", "error",
              "response_body"]
    readonly_fields = fields


def _when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S UTC}" if value else "-"


# A delivery made before endpoint keys were per organization: its endpoint's breaker and cap
# are shared with other organizations' deliveries to that host, whose failures and attempts
# in flight are theirs to see, not this page's.
SHARED_NOTE = ("Its endpoint is shared with other organizations (this delivery was made before "
               "endpoints were per organization): their counts are not shown and its circuit "
               "is not closed from here; “Redeliver now” moves this delivery to this "
               "organization's own endpoint.")


State = CallbackDelivery.State


def delivery_next_step(delivery: CallbackDelivery, *, now=None) -> str:
    """What happens next to a delivery and why it waits, in one sentence: in flight (since
    when), backing off (until when, after what), paused behind its endpoint's open circuit,
    due but waiting for a sender (its endpoint at the per-host cap, or no dispatcher), or
    settled (delivered; gave up, and why). Reads the endpoint's breaker and, for a due one,
    its in-flight count: for one delivery's page, not a list."""
    now = now or timezone.now()
    state, attempts = delivery.state, delivery.attempts
    if state == State.DELIVERED:
        return (f"Delivered {_when(delivery.delivered_at)} on attempt {attempts}. Nothing more "
                "is sent (“Redeliver now” sends it again, same webhook-id).")
    if state in (State.FAILED, State.DISABLED):
        return (f"Gave up after {attempts} attempt(s): {delivery.last_error or 'no reason kept'}"
                ". Nothing more is sent unless an admin uses “Redeliver now” (one new attempt "
                "at once, same webhook-id, then the retry schedule anew).")
    if state == State.DELIVERING:
        started = CallbackAttempt.objects.filter(delivery=delivery, number=attempts).values_list(
            "started_at", flat=True).first()
        return (f"Attempt {attempts} in flight since {_when(started)}. If its sender stopped, "
                f"its lease ends {_when(delivery.next_attempt_at)} and the delivery is due "
                "again (same webhook-id).")
    shared = endpoint_shared(delivery.endpoint)
    endpoint = CallbackEndpoint.objects.filter(key=delivery.endpoint,
                                               open_until__isnull=False).first() \
        if delivery.endpoint else None
    if endpoint is not None and shared:
        return (f"Waiting for its endpoint: paused until {_when(endpoint.open_until)}, then one "
                f"probe attempt at a time. {SHARED_NOTE}")
    if endpoint is not None:
        return (f"Waiting for its endpoint: failing since {_when(endpoint.failing_since)} "
                f"({endpoint.consecutive_failures} failed attempts in a row), paused until "
                f"{_when(endpoint.open_until)}, then one probe attempt at a time. This "
                "delivery's attempt count does not move while it waits. “Close the endpoint's "
                "circuit” retries now.")
    due = delivery.next_attempt_at
    if due is not None and due > now:
        if not attempts:
            return f"First attempt at {_when(due)}."
        return (f"Backing off: attempt {attempts + 1} at {_when(due)}, after attempt "
                f"{attempts} failed ({delivery.last_error or 'no reason kept'}).")
    if shared:
        return f"Due since {_when(due)}, waiting for a sender. {SHARED_NOTE}"
    cap = settings.AUXOT_CALLBACK_PER_HOST_CONCURRENCY
    in_flight = CallbackDelivery.objects.filter(endpoint=delivery.endpoint,
                                                state=State.DELIVERING).count()
    if in_flight >= cap:
        return (f"Due since {_when(due)}, waiting for a sender: {in_flight} attempts to its "
                f"endpoint are in flight (each dispatcher sends at most {cap} at a time to "
                "one endpoint while others wait).")
    return (f"Due since {_when(due)}, waiting for a dispatcher to take it (within a second "
            "when one runs; if it stays due, check that qcluster or manage.py callbacks is "
            "running).")


class EndpointFilter(admin.SimpleListFilter):
    """Deliveries by receiver endpoint (scheme://host:port): the endpoints of this user's
    organizations that failed (from the small breaker table, never a DISTINCT over the
    deliveries), the open ones first, and whichever endpoint a row's link chose."""

    title = "endpoint"
    parameter_name = "endpoint_key"  # not a field's name: no lookup on the column itself
    OPEN = "open"

    def lookups(self, request, model_admin):
        rows = CallbackEndpoint.objects.filter(consecutive_failures__gt=0)
        if not request.user.is_superuser:
            orgs = org_ids_with(request, model_admin.view_roles)
            if not orgs:
                return [(self.OPEN, "Circuit open (paused)")]
            rows = rows.filter(functools.reduce(operator.or_, (
                Q(key__endswith=f"{ORG_MARK}{int(org)})") for org in orgs)))
        choices = [(self.OPEN, "Circuit open (paused)")]
        keys = set()
        for key, open_until in rows.order_by("open_until", "key").values_list(
                "key", "open_until")[:50]:
            keys.add(key)
            choices.append((key, f"{endpoint_label(key)}"
                                 + (" (circuit open)" if open_until else " (failing)")))
        chosen = self.value()
        if chosen and chosen != self.OPEN and chosen not in keys:
            choices.append((chosen, endpoint_label(chosen)))
        return choices

    def queryset(self, request, queryset):
        chosen = self.value()
        if not chosen:
            return queryset
        if chosen == self.OPEN:
            return queryset.filter(endpoint__in=CallbackEndpoint.objects.filter(
                open_until__isnull=False).values("key"))
        return queryset.filter(endpoint=chosen)


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(OrgScopedAdmin):
    """The delivery log: every role of the org views it; admins redeliver and close an
    endpoint's circuit."""

    list_display = ["webhook_id", "intake", "work_item_link", "endpoint_link", "state",
                    "attempts", "last_status", "next_attempt", "created_at"]
    list_filter = ["state", EndpointFilter, "intake", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["webhook_id", "work_item__id", "intake__name"]
    search_help_text = ("A webhook-id (msg_…) or a work id is looked up at once; anything else "
                        "is a substring of those or of the intake's name.")
    list_select_related = ["intake"]
    # A filtered or searched list counts its own rows only: Django's "(N total)" would count
    # every delivery in reach again (a scan of the table's share of the org) on each page.
    show_full_result_count = False
    inlines = [CallbackAttemptInline]
    actions = ["redeliver_now", "close_endpoint_circuit"]
    org_path = "intake__org"
    add_roles = change_roles = frozenset()
    admin_adds = False  # made by the product only
    fields = ["webhook_id", "intake", "work_item_link", "display_url", "endpoint_status",
              "uses_intake_default", "state", "next_step", "attempts", "last_status",
              "last_error", "next_attempt_at", "delivered_at", "created_at"]
    readonly_fields = fields

    def get_changelist(self, request, **kwargs):
        base = super().get_changelist(request, **kwargs)

        class DeliveryChangeList(base):
            def get_results(self, request):
                """The list says "paused" for a delivery behind an open circuit: one read
                of the breaker table for the page's endpoints (a subquery per row would
                run for every delivery in reach before the sort)."""
                super().get_results(request)
                keys = {row.endpoint for row in self.result_list if row.endpoint}
                paused = dict(CallbackEndpoint.objects.filter(
                    key__in=keys, open_until__isnull=False).values_list("key", "open_until")
                ) if keys else {}
                for row in self.result_list:
                    row.paused_until = paused.get(row.endpoint)

        return DeliveryChangeList

    def get_search_results(self, request, queryset, search_term):
        """A webhook-id or a work id pasted in is one read of a unique index; the substring
        search reads every delivery in reach."""
        term = search_term.strip()
        exact = queryset.filter(webhook_id=term) if term.startswith("msg_") else None
        if exact is None and (work_id := _uuid_or_none(term)) is not None:
            exact = queryset.filter(work_item_id=work_id)
        if exact is not None and exact.exists():
            return exact, False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="endpoint")
    def endpoint_status(self, obj: CallbackDelivery) -> str:
        if endpoint_shared(obj.endpoint):
            return "Shared with other organizations (see the next step)"
        return endpoint_health(obj.endpoint) or "Healthy"

    @admin.display(description="endpoint", ordering="endpoint")
    def endpoint_link(self, obj: CallbackDelivery) -> str:
        if not obj.endpoint:
            return "-"
        url = reverse("admin:intakes_callbackdelivery_changelist") + "?" + urlencode(
            {EndpointFilter.parameter_name: obj.endpoint})
        return format_html('<a href="{}">{}</a>', url, endpoint_label(obj.endpoint))

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: CallbackDelivery) -> str:
        if obj.state == State.DELIVERING:
            return "in flight"
        if obj.state != State.PENDING:
            return "-"
        paused = getattr(obj, "paused_until", None)
        if paused is not None:
            return f"paused until {_when(paused)} (endpoint failing)"
        return _when(obj.next_attempt_at)

    @admin.display(description="next step")
    def next_step(self, obj: CallbackDelivery) -> str:
        return delivery_next_step(obj)

    @admin.display(description="work item")
    def work_item_link(self, obj: CallbackDelivery) -> str:
        url = reverse("admin:workflows_workitem_change", args=[obj.work_item_id])
        return format_html('<a href="{}">{}</a>', url, obj.work_item_id)

    @admin.display(description="URL")
    def display_url(self, obj: CallbackDelivery) -> str:
        return url_redact(obj.url)

    @org_action(roles=MANAGERS, description="Redeliver now (new attempt, same webhook-id)",
                at_once=OBJECTS_AT_ONCE)
    def redeliver_now(self, request, queryset):
        ip = client_ip(request)
        deliveries = list(queryset.select_related("intake__org"))
        nowhere = sum(1 for d in deliveries if redeliver_refusal(d))
        done = sum(callback_delivery_redeliver(delivery=d, actor=request.user, ip=ip)
                   for d in deliveries)
        skipped = len(deliveries) - done - nowhere
        gone = skipped and len(deliveries) - queryset.model.objects.filter(
            pk__in=[d.pk for d in deliveries]).count()  # retention deleted them meanwhile
        skipped -= gone
        paused = queryset.filter(state=State.PENDING, endpoint__in=CallbackEndpoint.objects.filter(
            open_until__isnull=False).values("key")).count()
        self.message_user(request, f"{done} delivery(ies) queued for a new attempt."
                          + (f" {nowhere} not sent: its intake has no callback URL now (set "
                             "one on the intake, then redeliver)." if nowhere else "")
                          + (f" {skipped} skipped: an attempt is in flight." if skipped else "")
                          + (f" {gone} gone: the retention policy deleted them with their "
                             "work items meanwhile." if gone else "")
                          + (f" {paused} wait behind their endpoint's open circuit (“Close the "
                             "endpoint's circuit” sends them now)." if paused else ""))

    # Not bounded: it reads the selection's distinct endpoints, a handful whatever is selected.
    @org_action(roles=MANAGERS, at_once=None,
                description="Close the endpoint's circuit (its waiting deliveries go now)")
    def close_endpoint_circuit(self, request, queryset):
        ip = client_ip(request)
        # The distinct (endpoint, organization) pairs only: "select all" on a large
        # organization loaded every delivery into Python for a handful of endpoints.
        pairs = queryset.order_by().values_list("endpoint", "intake__org_id").distinct()
        orgs = Organization.objects.in_bulk({org_id for _, org_id in pairs})
        endpoints = {}
        for key, org_id in pairs:
            endpoints.setdefault(key, orgs[org_id])
        # A circuit shared with other organizations (a key from before keys were per
        # organization) stays: closing it would send their waiting deliveries too.
        shared = sorted(endpoint_label(key) or "(no endpoint)" for key in
                        CallbackEndpoint.objects.filter(
                            key__in=[key for key in endpoints if endpoint_shared(key)],
                            open_until__isnull=False).values_list("key", flat=True))
        closed = [endpoint_label(key) for key, org in endpoints.items()
                  if endpoint_circuit_close(key=key, org=org, actor=request.user, ip=ip)]
        if closed:
            self.message_user(request, f"Circuit closed for {', '.join(sorted(closed))}: its "
                              "waiting deliveries go out now; one more failure opens it again.",
                              messages.SUCCESS)
        if shared:
            self.message_user(request, f"Not closed: the circuit of {', '.join(shared)} is "
                              "shared with other organizations (deliveries made before "
                              "endpoints were per organization) and closing it would send "
                              "their waiting deliveries too. “Redeliver now” moves the "
                              "selected deliveries to this organization's own endpoint.",
                              messages.WARNING)
        if not closed and not shared:
            self.message_user(request, "No selected delivery's endpoint had an open circuit.",
                              messages.INFO)


class WorkItemCallbackInline(ReadOnlyInlineMixin, ScopedInlineMixin, admin.StackedInline):
    """The delivery log on a work item's page: every role of the item's org sees it, nobody
    edits it."""

    model = CallbackDelivery
    fk_name = "work_item"
    extra = 0
    can_delete = False
    verbose_name = verbose_name_plural = "callback delivery"
    fields = ["delivery", "state", "next_step", "attempts", "last_status", "last_error",
              "attempt_log"]
    readonly_fields = fields

    @admin.display(description="next step")
    def next_step(self, obj: CallbackDelivery) -> str:
        return delivery_next_step(obj)

    @admin.display(description="webhook-id")
    def delivery(self, obj: CallbackDelivery) -> str:
        return _delivery_link(obj)

    @admin.display(description="attempts")
    def attempt_log(self, obj: CallbackDelivery) -> str:
        rows = CallbackAttempt.objects.filter(delivery=obj).values_list(
            "number", "started_at", "status_code", "latency_ms", "error")
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>#{} {} → {} ({} ms) {}</li>",
            ((n, time_shown(t), s or "no answer", ms if ms is not None else "-",
              e) for n, t, s, ms, e in rows)))


# --- Intake side: a mixin for IntakeAdmin ------------------------------------------------

CALLBACK_READONLY = ["callback_state", "signing_secret_status", "delivery_log"]
CALLBACK_ACTIONS = ["send_test_callback", "rotate_signing_secret", "enable_callbacks"]


class IntakeCallbacksAdminMixin:
    """The callback fields, pages and actions of IntakeAdmin (list `CALLBACK_ACTIONS` in its
    `actions` and `CALLBACK_READONLY` in its fieldsets)."""

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return fields + [f for f in CALLBACK_READONLY if f not in fields]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "callback_url":
            kwargs["assume_scheme"] = "https"
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)

        class CallbackUrlForm(form):
            def clean_callback_url(self):
                url = self.cleaned_data.get("callback_url", "")
                if url:
                    try:
                        url_check(url, purpose="callback")
                    except RefusedDestination as exc:
                        raise forms.ValidationError(str(exc)) from None
                return url

        return CallbackUrlForm

    @admin.display(description="callback")
    def callback_state(self, obj: Intake) -> str:
        if obj._state.adding:
            return "-"
        if obj.callback_disabled:
            return format_html(
                '<strong style="color:#ba2121">Disabled</strong> since {} ({}). Fix the '
                "receiver, then use the action “Re-enable callbacks”.",
                obj.callback_disabled_at.strftime("%Y-%m-%d %H:%M UTC"),
                obj.callback_disabled_reason)
        if not obj.callback_url:
            return "No default URL (callers may send one)"
        failing = endpoint_health(endpoint_key(obj.callback_url, obj.org_id))
        return format_html("Enabled. {}", failing) if failing else "Enabled"

    @admin.display(description="signing secret")
    def signing_secret_status(self, obj: Intake) -> str:
        if not obj.signing_secret_encrypted:
            return "None yet: use the action “Rotate signing secret”."
        text = "Set"
        if obj.secret_rotated_at:
            text += f", last rotated {obj.secret_rotated_at:%Y-%m-%d %H:%M UTC}"
        if obj.previous_secret_expires_at:
            until = obj.previous_secret_expires_at
            text += f"; the previous one(s) sign too until {until:%Y-%m-%d %H:%M UTC}"
        return text + ". Shown only once, when created or rotated."

    @admin.display(description="delivery log")
    def delivery_log(self, obj: Intake) -> str:
        if obj._state.adding:
            return "-"
        recent = CallbackDelivery.objects.filter(intake=obj).order_by("-created_at")[
            :RECENT_DELIVERIES]
        url = reverse("admin:intakes_callbackdelivery_changelist") + f"?intake__id__exact={obj.pk}"
        rows = format_html_join("", "<li>{} {} · {} attempt(s) · last {}</li>", (
            (_delivery_link(d), d.state, d.attempts, d.last_status or "-") for d in recent))
        return format_html('<ul>{}</ul><a href="{}">All deliveries of this intake</a>',
                           rows, url)

    def signing_secret_stash(self, request, obj: Intake) -> None:
        """After a save: the secret to show once (new intake, or one that had none yet)."""
        if not obj.signing_secret_encrypted:
            request._auxot_new_secret = intake_signing_secret_rotate(
                intake=obj, actor=request.user, ip=client_ip(request))
        elif getattr(obj, "signing_secret", None):  # set by intake_create, see save_model
            request._auxot_new_secret = obj.signing_secret

    def get_urls(self):
        shown = self.admin_site.admin_view(self.signing_secret_view)
        rotated = self.admin_site.admin_view(self.signing_secrets_view)
        return [path("signing-secrets/", rotated, name="intakes_intake_signing_secrets"),
                path("<path:object_id>/signing-secret/", shown,
                     name="intakes_intake_signing_secret"), *super().get_urls()]

    def response_add(self, request, obj, post_url_continue=None):
        # Never the secret as the answer to the POST: a reload would post again and add a
        # second intake. Into the session, then a redirect to the page that shows it once.
        secret = getattr(request, "_auxot_new_secret", None)
        if secret:
            NEW_SECRETS.put(request, {obj.pk: secret}, verb="created")
            self.message_user(request, f"The intake “{obj.name}” was added.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:intakes_intake_signing_secret",
                                                args=[obj.pk]))
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        # An intake saved without a secret (made before secrets) got one, never shown.
        secret = getattr(request, "_auxot_new_secret", None)
        if secret:
            NEW_SECRETS.put(request, {obj.pk: secret}, verb="created")
            self.message_user(request, f"The intake “{obj.name}” was changed.",
                              messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:intakes_intake_signing_secret",
                                                args=[obj.pk]))
        return super().response_change(request, obj)

    def signing_secret_view(self, request, object_id):
        """A new intake's signing secret, once: the first GET after the add pops it from this
        session; a reload, a second GET or anyone else's session gets a page that says so."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        intake = self.get_object(request, object_id)  # another org's, or none: 404
        self.require_role(request, MANAGERS, intake)
        shown, late, meta = NEW_SECRETS.take(request, [intake.pk])
        secrets = {intake.pk: shown[str(intake.pk)]} if shown else {}
        return self._secret_page(request, [intake] if secrets else [], secrets,
                                 meta.get("verb", "created"),
                                 gone=None if secrets else intake, late=late)

    def signing_secrets_view(self, request):
        """The secrets the rotate action just made, once (the action redirects here)."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        ids = [pk for pk in map(_uuid_or_none, NEW_SECRETS.waiting(request)) if pk]
        intakes = [intake for intake in self.get_queryset(request).filter(pk__in=ids)
                   if has_role(request, MANAGERS, intake.org_id)]
        shown, late, meta = NEW_SECRETS.take(request, [intake.pk for intake in intakes])
        secrets = {intake.pk: shown[str(intake.pk)] for intake in intakes
                   if str(intake.pk) in shown}
        return self._secret_page(request, [i for i in intakes if i.pk in secrets], secrets,
                                 meta.get("verb", "rotated"),
                                 gone=None if secrets else "rotated", late=late)

    def _secret_page(self, request, intakes, secrets: dict, verb: str, gone: Intake | None = None,
                     late: bool = False) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "title": "Signing secret",
                   "verb": verb, "opts": self.model._meta,
                   "rows": [(i, secrets[i.pk]) for i in intakes],
                   "gone": gone, "late": late,
                   "shown_within_minutes": NEW_SECRETS.within // 60,
                   "window_hours": _window_hours()}
        response = TemplateResponse(request, "admin/intakes/signing_secret.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @org_action(roles=MANAGERS, description="Rotate signing secret (shows the new one once)",
                at_once=ROTATE_AT_ONCE)
    def rotate_signing_secret(self, request, queryset):
        applied, gone = each_still_there(queryset, lambda i: intake_signing_secret_rotate(
            intake=i, actor=request.user, ip=client_ip(request)))
        bulk_message(self, request, f"Rotated the signing secret of {len(applied)} "
                     "intake(s).", gone)
        if not applied:
            return None
        secrets = {i.pk: secret for i, secret in applied}
        NEW_SECRETS.put(request, secrets, verb="rotated")  # after a redirect: a reload rotates
        return HttpResponseRedirect(reverse("admin:intakes_intake_signing_secrets"))

    @org_action(roles=MANAGERS, description="Send test callback (signed sample body)",
                at_once=TEST_CALLBACKS_AT_ONCE)
    def send_test_callback(self, request, queryset):
        ip = client_ip(request)
        results = [(intake, callback_test_send(intake=intake, actor=request.user, ip=ip))
                   for intake in queryset.select_related("org")]
        context = {**self.admin_site.each_context(request), "title": "Test callback",
                   "opts": self.model._meta,
                   "results": [(i, url_redact(i.callback_url) if i.callback_url else "-", r)
                               for i, r in results]}
        return TemplateResponse(request, "admin/intakes/test_callback.html", context)

    @org_action(roles=MANAGERS, description="Re-enable callbacks (after a 410 Gone)",
                at_once=OBJECTS_AT_ONCE)
    def enable_callbacks(self, request, queryset):
        applied, gone = each_still_there(
            queryset.filter(callback_disabled_at__isnull=False),
            lambda i: intake_callback_enable(intake=i, actor=request.user, ip=client_ip(request)))
        done = sum(enabled for _intake, enabled in applied)
        bulk_message(self, request, f"Callbacks re-enabled on {done} intake(s).", gone,
                     level=messages.SUCCESS if done else messages.INFO)


def _window_hours() -> float:
    return settings.AUXOT_CALLBACK_SECRET_ROTATION_HOURS



# --- CallbackEndpoint: the breakers, for the operator --------------------------------------

@admin.register(CallbackEndpoint)
class CallbackEndpointAdmin(admin.ModelAdmin):
    """Every receiver endpoint that failed, per organization: superusers only (the last error
    may quote a receiver)."""

    list_display = ["key", "status", "failing_since", "consecutive_failures", "open_until",
                    "last_success_at", "last_error"]
    list_filter = [("open_until", admin.EmptyFieldListFilter)]
    search_fields = ["key"]
    ordering = ["-failing_since"]
    fields = [*list_display, "probe_until", "opened_count", "updated_at"]
    readonly_fields = fields

    @admin.display(description="state")
    def status(self, obj: CallbackEndpoint) -> str:
        return endpoint_health(obj.key) or ("Failing" if obj.consecutive_failures else "Healthy")

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _uuid_or_none(value: str):
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
