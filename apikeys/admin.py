"""API keys: members issue personal keys for themselves, admins team keys too.

The token is shown exactly once: stashed in the session by the add view and popped by the
next render of the key's page; only its digest is stored.

A key's page is read-only (nothing to save). It ends with Revoke (a confirm page, then the
audited `apikey_revoke`), never with Delete: a deleted key would leave no audit row, and
revoking is final anyway.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_cap_check, apikey_issue, apikey_revoke
from auxot.admin_base import (
    ACTORS,
    ADMIN,
    MEMBER,
    OBJECTS_AT_ONCE,
    OrgScopedAdmin,
    ShownOnce,
    bulk_message,
    each_still_there,
    has_role,
    org_action,
    org_ids_with,
    require_role,
    user_roles,
)
from auxot.errors import ApplicationError, ObjectGoneError
from auxot.http import client_ip

# A new key's token crosses one redirect (so a reload cannot issue a second key).
NEW_TOKEN = ShownOnce("auxot_new_api_token", purpose="admin-new-api-key", within=300)


class ApiKeyIssueForm(forms.ModelForm):
    kind = forms.ChoiceField(choices=ApiKey.Kind.choices, initial=ApiKey.Kind.USER,
                             help_text="A personal key acts as you; a team key (Business and "
                             "Enterprise, admins only) acts for its team.")

    class Meta:
        model = ApiKey
        fields = ["org", "label", "kind", "team", "expires_at"]
        help_texts = {"expires_at": "Optional. After this time the key answers 401."}

    def clean(self):
        data = super().clean()
        org, kind, team = data.get("org"), data.get("kind"), data.get("team")
        request = self.request
        if org is None:
            return data
        if kind == ApiKey.Kind.TEAM:
            if not has_role(request, {ADMIN}, org.pk):
                raise forms.ValidationError("Only organization admins issue team keys.")
            if refusal := org.teams_refusal():
                raise forms.ValidationError(refusal)
            if team is None:
                self.add_error("team", "Pick the team this key acts for.")
            elif team.org_id != org.pk:
                self.add_error("team", "That team belongs to another organization.")
        else:
            if team is not None:
                self.add_error("team", "A personal key has no team; leave it empty.")
            if not has_role(request, ACTORS, org.pk):
                raise forms.ValidationError(
                    "You can only issue personal keys in an organization where you are an "
                    "admin or a member.")
            try:
                apikey_cap_check(org=org, user=request.user)
            except ApplicationError as exc:
                raise forms.ValidationError(exc.detail) from None
        expires = data.get("expires_at")
        if expires is not None and expires <= timezone.now():
            self.add_error("expires_at", "The expiry must be in the future.")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(OrgScopedAdmin):
    admin_audit = False  # its services write the audit trail (and its deletions' receivers)
    list_display = ["label", "kind", "owner", "display", "last_used_at", "expires_at",
                    "status", "created_at"]
    list_filter = ["kind", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["label", "lookup_id"]
    list_select_related = ["org", "user", "team"]
    add_roles = ACTORS
    change_roles = frozenset()
    action_roles = ACTORS
    actions = ["revoke_selected"]
    change_form_template = "admin/apikeys/apikey/change_form.html"
    readonly_fields = ["label", "kind", "owner", "org", "lookup_id", "last_four", "display",
                       "created_by", "created_at", "last_used_at", "expires_at", "revoked_at",
                       "revoked_by"]

    def has_change_permission(self, request, obj=None):
        return False  # every field is read-only: no Save buttons, for superusers too

    def has_delete_permission(self, request, obj=None):
        # Revoke instead (audited, and final): a delete left no trace in the append-only
        # audit log. No Delete button, delete view or bulk delete, for superusers too.
        return False

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        # Members see their own personal keys; admins and auditors see the org's keys.
        roles = user_roles(request)
        wide = [org for org, role in roles.items() if role != MEMBER]
        own = [org for org, role in roles.items() if role == MEMBER]
        return qs.filter(Q(org_id__in=wide) | Q(org_id__in=own, user=request.user))

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyIssueForm
            form = super().get_form(request, obj, change=change, **kwargs)

            class BoundForm(form):
                def __init__(self, *args, **kw):
                    super().__init__(*args, **kw)
                    self.request = request
                    orgs = self.fields["org"].queryset
                    if orgs.count() == 1:
                        self.fields["org"].initial = orgs.first().pk
                    if not request.user.is_superuser and not org_ids_with(request, {ADMIN}):
                        # Admins alone issue team keys: a member is not offered one to be
                        # refused on save (the form's clean still refuses a forged one).
                        self.fields["kind"].choices = [
                            (k, v) for k, v in ApiKey.Kind.choices if k == ApiKey.Kind.USER]
                        self.fields["kind"].help_text = "A personal key acts as you."
                        self.fields["team"].disabled = True
                        self.fields["team"].help_text = "Team keys are issued by admins."

            return BoundForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["org", "label", "kind", "team", "expires_at"]
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    @admin.display(description="owner")
    def owner(self, obj):
        return obj.team.name if obj.team_id else getattr(obj.user, "username", "-")

    @admin.display(description="key")
    def display(self, obj):
        return obj.display

    @admin.display(description="status")
    def status(self, obj):
        if obj.revoked_at:
            return "revoked"
        return "active" if obj.is_active(timezone.now()) else "expired"

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        team_kind = data["kind"] == ApiKey.Kind.TEAM
        require_role(request, {ADMIN} if team_kind else ACTORS, data["org"])
        issued = apikey_issue(org=data["org"], label=data["label"],
                              user=None if team_kind else request.user,
                              team=data["team"] if team_kind else None,
                              created_by=request.user, expires_at=data.get("expires_at"),
                              ip=client_ip(request))
        # Django's add view goes on with `obj` (response_add): make it the stored row.
        obj.pk = issued.key.pk
        obj.refresh_from_db()
        NEW_TOKEN.put(request, {issued.key.pk: issued.token})

    def save_related(self, request, form, formsets, change):
        pass

    def log_addition(self, request, obj, message):
        pass  # the service wrote the audit row

    def response_add(self, request, obj, post_url_continue=None):
        # Straight to the key's page: it shows the token, once.
        return HttpResponseRedirect(reverse("admin:apikeys_apikey_change", args=[obj.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        key = self.get_object(request, object_id)
        if key.revoked_at is None and self._may_revoke(request, key):
            extra["revoke_url"] = reverse("admin:apikeys_apikey_revoke", args=[key.pk])
        tokens, late, _meta = NEW_TOKEN.take(request, [key.pk])
        if tokens:
            extra["new_token"] = tokens[str(key.pk)]
        elif late:
            self.message_user(request, (
                f"This key's token was not shown within {NEW_TOKEN.within // 60} minutes "
                "of issuing it and is gone for good: revoke the key and issue another."),
                messages.WARNING)
        response = super().change_view(request, object_id, form_url, extra)
        if "new_token" in extra:
            response["Cache-Control"] = "no-store"
        return response

    def _may_revoke(self, request, key: ApiKey) -> bool:
        if has_role(request, {ADMIN}, key.org_id):
            return True
        return key.kind == ApiKey.Kind.USER and key.user_id == request.user.pk and has_role(
            request, ACTORS, key.org_id)

    def get_urls(self):
        revoke = self.admin_site.admin_view(self.revoke_view)
        return [path("<path:object_id>/revoke/", revoke, name="apikeys_apikey_revoke"),
                *super().get_urls()]

    def revoke_view(self, request, object_id):
        """Revoke one key from its page: GET asks for confirmation, POST revokes (audited as
        apikey.revoked). Admins of the key's organization revoke any of its keys, members
        their own personal keys; anyone else gets 403 (or 404, a key they cannot see)."""
        key = self.get_object(request, object_id)
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        if not self._may_revoke(request, key):
            raise PermissionDenied
        page = reverse("admin:apikeys_apikey_change", args=[key.pk])
        if key.revoked_at is not None:
            self.message_user(request, "This key is already revoked.", messages.INFO)
            return HttpResponseRedirect(page)
        if request.method == "POST":
            try:
                apikey_revoke(key=key, revoked_by=request.user, ip=client_ip(request))
            except ObjectGoneError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
                return HttpResponseRedirect(reverse("admin:apikeys_apikey_changelist"))
            self.message_user(request, f"Revoked the key “{key.label}”: it answers 401 from "
                              "now on.", messages.SUCCESS)
            return HttpResponseRedirect(page)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Revoke API key", "key": key, "original": key,
                   "owner": self.owner(key), "display": key.display}
        return TemplateResponse(request, "admin/apikeys/apikey/revoke_confirm.html", context)

    @org_action(roles=ACTORS, description="Revoke selected keys (final; they answer 401 at once)",
                at_once=OBJECTS_AT_ONCE)
    def revoke_selected(self, request, queryset):
        keys = [k for k in queryset.select_related("org") if k.revoked_at is None]
        # Members revoke only their own personal keys: one other key refuses the whole batch.
        if not all(self._may_revoke(request, key) for key in keys):
            raise PermissionDenied
        applied, gone = each_still_there(keys, lambda key: apikey_revoke(
            key=key, revoked_by=request.user, ip=client_ip(request)))
        bulk_message(self, request, f"Revoked {len(applied)} key(s).", gone,
                     level=messages.SUCCESS if applied else messages.WARNING)
