"""Tenancy and roles for every admin page, enforced on the server.

Roles come from `Membership.role`, not Django model permissions, so a plain `is_staff` user
with a membership gets exactly what the role allows:

- admin:   manage workflows, steps, providers, intakes, team keys; revoke any key in the org.
- member:  own personal keys, run workflows, approve/cancel work, view the org's work.
- auditor: view everything in the org, including the audit log; change and run nothing.

Querysets, foreign-key choices, actions and object URLs are scoped to the user's
organization(s); another organization's object by URL is a 404. Superusers see everything.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest

from auxot.models import Membership, Organization, Team

ADMIN = Membership.Role.ADMIN
MEMBER = Membership.Role.MEMBER
AUDITOR = Membership.Role.AUDITOR
EVERYONE = frozenset({ADMIN, MEMBER, AUDITOR})
ACTORS = frozenset({ADMIN, MEMBER})  # may run, approve, cancel
MANAGERS = frozenset({ADMIN})


def user_roles(request: HttpRequest) -> dict[int, str]:
    """{org_id: role} for the request's user, computed once per request."""
    cached = getattr(request, "_auxot_roles", None)
    if cached is None:
        user = request.user
        cached = {} if not user.is_authenticated else dict(
            Membership.objects.filter(user=user).values_list("org_id", "role"))
        request._auxot_roles = cached
    return cached


def org_ids_with(request: HttpRequest, roles) -> list[int]:
    return [org_id for org_id, role in user_roles(request).items() if role in roles]


def has_role(request: HttpRequest, roles, org_id: int | None = None) -> bool:
    """Superusers always; otherwise a role in `roles` (in `org_id`, or in any org)."""
    if request.user.is_superuser:
        return True
    found = user_roles(request)
    if org_id is None:
        return any(role in roles for role in found.values())
    return found.get(org_id) in roles


def _org_id_of(obj: Model, path: str) -> int | None:
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop, None)
        if obj is None:
            return None
    if last == "pk":
        return obj.pk
    return getattr(obj, f"{last}_id", None)


class OrgScopedAdmin(admin.ModelAdmin):
    """Base for every Auxot ModelAdmin: scope by organization, authorize by role.

    `org_path` is the lookup from the model to its Organization ("org", "workflow__org", or
    "pk" for Organization itself). The role sets say who may view, add, change and delete,
    and who may run the changelist actions.
    """

    org_path = "org"
    view_roles = EVERYONE
    add_roles = MANAGERS
    change_roles = MANAGERS
    delete_roles = frozenset()
    action_roles = MANAGERS

    # --- scoping -----------------------------------------------------------------------
    def scope(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if request.user.is_superuser:
            return queryset
        lookup = "pk__in" if self.org_path == "pk" else f"{self.org_path}__in"
        return queryset.filter(**{lookup: org_ids_with(request, self.view_roles)})

    def get_queryset(self, request):
        return self.scope(request, super().get_queryset(request))

    def obj_org_id(self, obj) -> int | None:
        return _org_id_of(obj, self.org_path)

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # Django redirects to the index with a message; another org's object is simply a 404.
        raise Http404("Not found.")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if not request.user.is_superuser:
            orgs = org_ids_with(request, self.add_roles | self.change_roles)
            model = db_field.related_model
            if model is Organization:
                kwargs["queryset"] = Organization.objects.filter(pk__in=orgs)
            elif model is Team:
                kwargs["queryset"] = Team.objects.filter(org_id__in=orgs)
            elif any(f.name == "org" for f in model._meta.fields):
                kwargs["queryset"] = model._default_manager.filter(org_id__in=orgs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # --- roles -------------------------------------------------------------------------
    def _allowed(self, request, roles, obj=None) -> bool:
        if not request.user.is_active or not request.user.is_staff:
            return False
        if obj is None:
            return has_role(request, roles)
        return has_role(request, roles, self.obj_org_id(obj))

    def has_module_permission(self, request):
        return self._allowed(request, self.view_roles)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, self.view_roles, obj)

    def has_add_permission(self, request):
        return self._allowed(request, self.add_roles)

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, self.change_roles, obj)

    def has_delete_permission(self, request, obj=None):
        return self._allowed(request, self.delete_roles, obj)

    def get_actions(self, request):
        if not self._allowed(request, self.action_roles):
            return {}
        return super().get_actions(request)


class ScopedInlineMixin:
    """Inlines follow their parent's change permission (auditors see them read-only)."""

    def _parent_allows(self, request, obj) -> bool:
        parent = self.admin_site._registry.get(self.parent_model)
        return parent is not None and parent.has_change_permission(request, obj)

    def has_add_permission(self, request, obj=None):
        return self._parent_allows(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._parent_allows(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._parent_allows(request, obj)

    def has_view_permission(self, request, obj=None):
        parent = self.admin_site._registry.get(self.parent_model)
        return parent is not None and parent.has_view_permission(request, obj)
