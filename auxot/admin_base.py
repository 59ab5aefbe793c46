"""Tenancy and roles for every admin page, enforced on the server.

Roles come from `Membership.role`, not Django model permissions, so a plain `is_staff` user
with a membership gets exactly what the role allows:

- admin:   manage workflows, steps, providers, intakes, team keys; revoke any key in the org.
- member:  own personal keys, run workflows, approve/cancel work, view the org's work.
- auditor: view everything in the org, including the audit log; change and run nothing.

Querysets, foreign-key choices, actions and object URLs are scoped to the user's
organization(s); another organization's object by URL is a 404. Superusers see everything.

Seeing an object is not acting on it: a user may be an auditor in one organization and an
admin in another. Every action and custom view therefore authorizes against each object's OWN
organization: views call `require_role`, changelist actions are declared with `org_action`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Collection

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import NotRelationField, get_fields_from_path
from django.core.exceptions import (
    BadRequest,
    FieldDoesNotExist,
    PermissionDenied,
    ValidationError,
)
from django.db import transaction
from django.db.models import Model, ProtectedError, QuerySet, RestrictedError
from django.db.models.constants import LOOKUP_SEP
from django.forms.utils import pretty_name
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.utils.crypto import salted_hmac
from django.utils.text import smart_split

from auxot import crypto
from auxot.credentials import (
    credential_formats_redacted,
    free_text_credentials,
    free_text_refusal,
)
from auxot.errors import ObjectGoneError
from auxot.http import client_ip
from auxot.models import Membership, Organization, Team
from auxot.outbound import url_redact, urls_redacted
from auxot.services import admin_change_record

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
    if isinstance(obj, Organization):
        return obj.pk
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop, None)
        if obj is None:
            return None
    if last == "pk":
        return obj.pk
    return getattr(obj, f"{last}_id", None)


def require_role(request: HttpRequest, roles: Collection[str], target: Model | int | None, *,
                 org_path: str = "org") -> None:
    """Raise PermissionDenied unless the user holds one of `roles` in the organization of
    `target` (an organization id, an Organization, or an object reached by `org_path`).

    Never "the role somewhere": an object whose organization cannot be found is refused.
    """
    if request.user.is_active and request.user.is_superuser:
        return
    org_id = target if isinstance(target, int) or target is None else _org_id_of(
        target, org_path)
    if org_id is None or user_roles(request).get(org_id) not in roles:
        raise PermissionDenied


def require_role_for_all(request: HttpRequest, roles: Collection[str], queryset: QuerySet, *,
                         org_path: str = "org") -> QuerySet:
    """Refuse (PermissionDenied) if ANY row of `queryset` lies outside the organizations where
    the user holds one of `roles`; otherwise the queryset, narrowed to those organizations so
    that a row appearing between the check and the write is not touched either."""
    if request.user.is_active and request.user.is_superuser:
        return queryset
    lookup = "pk__in" if org_path == "pk" else f"{org_path}__in"
    allowed = {lookup: org_ids_with(request, roles)}
    # exclude() also counts rows whose organization is NULL as outside.
    if queryset.exclude(**allowed).exists():
        raise PermissionDenied
    return queryset.filter(**allowed)


def _require_all_selected_visible(request: HttpRequest, queryset: QuerySet) -> None:
    # Django silently drops selected ids the user cannot see (another organization's), which
    # would apply the action to the rest: a forged selection is refused as a whole instead.
    if request.user.is_superuser or request.POST.get("select_across") == "1":
        return
    selected = set(request.POST.getlist(ACTION_CHECKBOX_NAME))
    if queryset.count() != len(selected):
        raise PermissionDenied


# `org_action`'s usual bound: an action that writes a transaction and an audit row per
# selected object (a revoke, a deactivation, a resend) takes at most this many at once.
OBJECTS_AT_ONCE = 500


def org_action(*, roles: Collection[str], description: str, at_once: int | None,
               permissions: list[str] | None = None) -> Callable:
    """Declare a changelist action authorized per object: it runs only if the user holds one
    of `roles` in EVERY selected object's organization; one object outside refuses the whole
    action with 403 and nothing changes. The ModelAdmin's `org_path` locates the organization.

    `at_once` bounds the work one request does: an action that works object by object inside
    the request (a transaction, an audit row, maybe a request to a receiver each) takes at
    most that many, and a larger selection ("Select all" over a long list) is refused whole
    with a message, nothing done: done in part, it would end at the web server's timeout
    halfway, and a second run could not tell the done from the rest. None is for an action
    whose cost does not grow with the selection, or that bounds itself (says why where it
    is declared). Every action must say which (no default)."""
    roles = frozenset(roles)

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def action(modeladmin, request, queryset):
            _require_all_selected_visible(request, queryset)
            queryset = require_role_for_all(request, roles, queryset,
                                            org_path=getattr(modeladmin, "org_path", "org"))
            limit = action.at_once
            if limit is not None and (selected := queryset.count()) > limit:
                plural = modeladmin.model._meta.verbose_name_plural
                modeladmin.message_user(
                    request, f"Nothing was done: {selected} {plural} are selected and "
                    f"“{description}” takes at most {limit} at once. Narrow the list with "
                    "its filters or select fewer rows, then run it again.", messages.ERROR)
                return None
            try:
                return func(modeladmin, request, queryset)
            except ObjectGoneError as exc:
                # A last resort only: every bulk action carries on past an object deleted
                # meanwhile (`each_still_there`); tests/admin/test_admin_deletion_races.py
                # drives each one with a deletion in the middle of its selection.
                modeladmin.message_user(request, exc.detail, messages.ERROR)
                return None

        action.org_roles = roles
        action.at_once = at_once
        return admin.action(action, description=description, permissions=permissions)

    return decorate


def each_still_there(objects, apply: Callable) -> tuple[list, int]:
    """The one rule of every bulk action for an object another admin deleted meanwhile
    (read with the selection, gone when its row was taken: its service raised
    ObjectGoneError, changed nothing and audited nothing): skip it and carry on, so the
    action applies to every selected object still there, each audited by its service.
    Returns ([(object, what `apply` returned)] for the ones applied, how many were gone);
    `gone_note` says the second in the action's one message."""
    applied, gone = [], 0
    for obj in objects:
        try:
            applied.append((obj, apply(obj)))
        except ObjectGoneError:
            gone += 1
    return applied, gone


def gone_note(model: type[Model], gone: int) -> str:
    """The sentence a bulk action's message ends with when `gone` selected objects were
    deleted by someone else meanwhile ("" for none)."""
    if not gone:
        return ""
    meta = model._meta
    if gone == 1:
        return (f" 1 {meta.verbose_name} was deleted by someone else meanwhile: nothing was "
                "done to it.")
    return (f" {gone} {meta.verbose_name_plural} were deleted by someone else meanwhile: "
            "nothing was done to them.")


def bulk_message(modeladmin, request: HttpRequest, message: str, gone: int, *,
                 level: int = messages.SUCCESS) -> None:
    """A bulk action's one message: what it did, then `gone_note`; a warning when some
    selected objects were gone."""
    modeladmin.message_user(request, message + gone_note(modeladmin.model, gone),
                            messages.WARNING if gone else level)


# Fields the admin shows only redacted (a callback URL's or a provider's base URL's path and
# query may hold tokens): wherever one is read-only, `<name>_redacted` (`url_redact`) shows
# instead; only a form that edits it, for someone who may change the object, holds it whole.
REDACTED_FIELDS = frozenset({"url", "callback_url", "base_url"})
_REDACTED_SUFFIX = "_redacted"


def _url_shown(name: str, description: str):
    @admin.display(description=description)
    def shown(self, obj) -> str:
        value = getattr(obj, name, "")
        return url_redact(value) if value else "-"

    return shown


# --- no credential in free text ------------------------------------------------------------
# Every text a tenant types into an admin form (a name, a label, a description, a team's or
# an intake's name, a key's label, a provider's model, a secret's hosts) is shown to
# everyone who may view the object, in every list and page, in the audit log and its
# export: a credential found there by its format (auxot/credentials.py) is refused when the
# form is saved, naming the field and the kind, and the form comes back with it REDACTED.
# Every form of every OrgScopedAdmin and ScopedInlineMixin inline gets the rule
# (`credential_free_form`); these are the text fields it leaves alone, by
# "app_label.Model.field" (a form-only field by its form's name), each with why.
# tests/admin/test_free_text_credentials.py fails for a text field that is in neither.
CREDENTIAL_TEXT_ALLOWED = {
    "auxot.Secret.value": "the secret itself: write-only, stored encrypted, never shown",
    "workflows.Step.config": "its kind's validate_stored refuses one, naming the config path "
                             "and what the kind can do instead (url_secret, secret_headers)",
    "workflows.Step.output_schema": "Step.clean refuses one, naming the schema path",
    "workflows.Workflow.input_schema": "Workflow.clean refuses one, naming the schema path",
    **{f"{label}.{name}": "a URL shown only through url_redact outside the form that edits "
       "it (REDACTED_FIELDS): a callback URL may be a chat webhook, whose path is its token"
       for label, name in (("intakes.Intake", "callback_url"),
                           ("workflows.Provider", "base_url"))},
}


def credential_text_field(model: type[Model], name: str, field: forms.Field) -> bool:
    """Whether the rule reads this form field: text (a CharField of any kind, a JSON
    value) that is not in CREDENTIAL_TEXT_ALLOWED."""
    return isinstance(field, forms.CharField | forms.JSONField) and not field.disabled and (
        f"{model._meta.label}.{name}" not in CREDENTIAL_TEXT_ALLOWED)


class _NoCredential:
    """A form field's validator: `free_text_refusal` as its error."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, value) -> None:
        if message := free_text_refusal(value, self.label):
            raise ValidationError(message, code="credential")


class CredentialFreeFormMixin:
    """The rule above, for one form: a validator on each text field it reads (so it runs
    before the form's own checks, which may quote what they refuse), and after cleaning,
    each refused field's typed text REDACTED in what the page shows again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._credential_fields = [
            name for name, field in self.fields.items()
            if credential_text_field(self._meta.model, name, field)]
        for name in self._credential_fields:
            field = self.fields[name]
            field.validators = [*field.validators, _NoCredential(str(
                field.label or pretty_name(name)))]

    def full_clean(self):
        super().full_clean()
        if not self.is_bound:
            return
        data = None
        for name in self._credential_fields:
            key = self.add_prefix(name)
            raw = self.data.get(key)
            if isinstance(raw, str) and free_text_credentials(raw):
                data = data if data is not None else self.data.copy()
                data[key] = credential_formats_redacted(raw)
        if data is not None:
            self.data = data


def credential_free_form(form: type[forms.BaseForm]) -> type[forms.BaseForm]:
    """`form` with CredentialFreeFormMixin (once), keeping its own fields."""
    if issubclass(form, CredentialFreeFormMixin):
        return form
    guarded = type(form.__name__, (CredentialFreeFormMixin, form),
                   {"__module__": form.__module__})
    guarded.base_fields = form.base_fields  # a ModelForm subclass rebuilds them otherwise
    return guarded


def audit_extra_text(extra: dict) -> str:
    """An audit row's `extra` as pages and exports show it: JSON with every URL in it shown
    as `url_redact` shows one now. Rows recorded before it hid a URL's path keep the path
    (the log is append-only); this is where it stops showing."""
    return json.dumps(urls_redacted(extra), sort_keys=True, ensure_ascii=False)


class OrgRelatedFieldListFilter(admin.RelatedFieldListFilter):
    """A relation's filter that lists the related rows of the organizations this user may
    view here (one small query on the related table), not every organization's: Django's
    default lists them all, names included. Superusers see every row."""

    def field_choices(self, field, request, model_admin):
        if request.user.is_superuser:
            return super().field_choices(field, request, model_admin)
        orgs = org_ids_with(request, model_admin.view_roles)
        related = field.related_model
        if related is Organization:
            limit = {"pk__in": orgs}
        elif any(f.name == "org" for f in related._meta.fields):
            limit = {"org_id__in": orgs}
        else:  # no organization of its own: the rows this user's own rows point at
            limit = {"pk__in": model_admin.get_queryset(request).distinct().values_list(
                f"{self.field_path}__pk", flat=True)}
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, ordering=ordering,
                                 limit_choices_to=limit)


def pk_or_none(model: type[Model], value):
    """`value` as `model`'s primary key, or None when it cannot be one (`not-a-uuid` in a
    URL): a lookup with it would raise ValidationError, a 500, where the page is a 404."""
    try:
        return model._meta.pk.to_python(value)
    except ValidationError:
        return None


def _lookup_split(model: type[Model], lookup: str) -> tuple[list[str], list[str]]:
    """(the field path's parts, the rest): `intake__team__id__exact` → (["intake", "team"],
    ["exact"]) (a relation's own key is the relation), `created_at__year__gte` →
    (["created_at"], ["year", "gte"])."""
    parts = lookup.split(LOOKUP_SEP)
    path: list[str] = []
    opts = model._meta
    for index, part in enumerate(parts):
        try:
            field = opts.get_field(part)
        except FieldDoesNotExist:
            return path, parts[index:]  # a lookup (`exact`) or a transform (`year`)
        if path and field.primary_key:
            return path, parts[index + 1:]  # `intake__id`: the relation itself
        path.append(part)
        if not field.is_relation or field.related_model is None:
            return path, parts[index + 1:]
        opts = field.related_model._meta
    return path, []


def filter_path(model: type[Model], lookup: str) -> str | None:
    """The field path a querystring lookup filters on (`intake__team__id__exact` →
    `intake__team`: a relation's own key is the relation), or None when its first part
    names no field (a `SimpleListFilter`'s parameter)."""
    return LOOKUP_SEP.join(_lookup_split(model, lookup)[0]) or None


# The lookups that list filters' links use: `state__exact`, `intake__id__exact`,
# `created_at__gte` / `__lt`, `revoked_at__isnull`, `…__isempty`; a bare `field=` and `__in`
# too. Anything else (a transform: `__year`, `__date`, `__iso_year`; `__regex`, `__contains`)
# is no filter's, and a bad value of one raised only when the query ran: a 500.
FILTER_LOOKUPS = frozenset({"exact", "in", "isnull", "isempty", "gt", "gte", "lt", "lte"})
# The date hierarchy's links (`created_at__year=2026&created_at__month=2`), with the values
# whose bounds Django can compute: it catches a ValueError from the first day, not the
# OverflowError of a huge year, nor the error of the next period's bound (year 9999 + 1).
HIERARCHY_PARTS = {"year": range(1, 9999), "month": range(1, 13), "day": range(1, 32)}


def _hierarchy_value_ok(part: str, value) -> bool:
    text = value[-1] if isinstance(value, list | tuple) and value else value
    return isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 4 \
        and int(text) in HIERARCHY_PARTS[part]


INTEGER_TYPES = frozenset({"AutoField", "BigAutoField", "SmallAutoField", "IntegerField",
                           "BigIntegerField", "SmallIntegerField", "PositiveIntegerField",
                           "PositiveBigIntegerField", "PositiveSmallIntegerField"})
INTEGER_RANGE = range(-(2**63), 2**63)  # what both databases store
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")  # (`--5` is no number: Django's to refuse)


def _integer_values_fit(model: type[Model], path: str, rest: list[str], value) -> bool:
    """Whether the numbers a lookup on an integer field (or a relation to an integer key)
    compares with fit a 64-bit integer: SQLite raised OverflowError for
    `?team=99999999999999999999` when the list's query ran (a 500). Text that is not a
    number is Django's to refuse (its own error page)."""
    if rest and rest[0] in ("isnull", "isempty"):
        return True
    try:
        field = get_fields_from_path(model, path)[-1]
    except (FieldDoesNotExist, NotRelationField):
        return True
    if field.is_relation and getattr(field, "target_field", None) is not None:
        field = field.target_field
    if field.get_internal_type() not in INTEGER_TYPES:
        return True
    texts = value if isinstance(value, list | tuple) else [value]
    if rest and rest[0] == "in":
        texts = [part for text in texts for part in str(text).split(",")]
    for text in texts:
        text = str(text).strip()
        if _INTEGER_TEXT.fullmatch(text) and int(text) not in INTEGER_RANGE:
            return False
    return True


def _scoped_filter(model, entry):
    """`entry` of a `list_filter`, with a relation's filter limited to the user's orgs."""
    if isinstance(entry, str):
        name, chosen = entry, None
    elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
        name, chosen = entry
    else:
        return entry  # a SimpleListFilter: it names its own choices
    if chosen not in (None, admin.RelatedFieldListFilter):
        return entry
    if not get_fields_from_path(model, name)[-1].is_relation:
        return entry
    return (name, OrgRelatedFieldListFilter)


# --- the audit trail of admin pages ----------------------------------------------------

HIDDEN = "(changed, not shown)"  # a write-only field's value never reaches the trail
_HIDDEN_NAMES = ("password", "secret_value", "encrypted", "digest", "token")


def _hidden(name: str, field: forms.Field | None) -> bool:
    widget = getattr(field, "widget", None)
    return isinstance(widget, forms.PasswordInput) or name == "value" or any(
        part in name for part in _HIDDEN_NAMES)


def _shown(value, field: forms.Field | None = None):
    """A form value as the trail keeps it: JSON-able, a related row by its name, URLs
    redacted (a callback or step URL's path and query may hold a token)."""
    if isinstance(field, forms.ModelMultipleChoiceField) and value is not None:
        return sorted(str(_shown(item, field)) for item in value)
    if isinstance(field, forms.ModelChoiceField) and value not in (None, ""):
        if not isinstance(value, Model):
            value = field.queryset.model._default_manager.filter(pk=value).first() or value
        return str(value)
    if isinstance(value, Model):
        return str(value)
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return urls_redacted(value)
    if isinstance(value, QuerySet | tuple | set):
        return [_shown(item) for item in value]
    return str(value)


def form_changes(form) -> dict[str, list]:
    """{field: [old, new]} of what the form changed; write-only fields as HIDDEN."""
    changes = {}
    for name in form.changed_data:
        field = form.fields.get(name)
        if _hidden(name, field):
            changes[name] = [HIDDEN, HIDDEN]
            continue
        changes[name] = [_shown(form.initial.get(name), field),
                         _shown(form.cleaned_data.get(name), field)]
    return changes


def formset_changes(formsets) -> dict[str, list]:
    """What the page's inlines (a workflow's steps) added, changed and deleted."""
    added, changed, deleted = [], [], []
    for formset in formsets or ():
        for form in formset.initial_forms:
            if formset.can_delete and formset._should_delete_form(form):
                deleted.append(str(form.instance))
            elif form.has_changed():
                changed.append({"object": str(form.instance), "fields": form_changes(form)})
        for form in formset.extra_forms:
            if form.has_changed() and not (formset.can_delete
                                           and formset._should_delete_form(form)):
                added.append({"fields": {name: new for name, (_old, new)
                                         in form_changes(form).items()}})
    return {name: rows for name, rows in
            (("inlines_added", added), ("inlines_changed", changed),
             ("inlines_deleted", deleted)) if rows}


class AuditedAdminMixin:
    """Every add, change and delete on an admin page is an audit row (`<model>.created`,
    `.changed`, `.deleted`: who, from where, which object, its organization, old and new
    values), in the transaction of the change. Django's own history (LogEntry) is no audit
    trail: nobody's scope, no address, no values. An admin whose services write the trail
    themselves (intakes, keys, secrets) sets `admin_audit = False`."""

    admin_audit = True
    # Changelist actions audited here, one row per selected object (`<model>.<action>`): for
    # other apps' admins (django-q2's "resubmit task"). Ours call services that audit.
    audit_actions = False
    # True where a pre_delete receiver audits every deletion of the model (cascades too).
    deletions_audited_elsewhere = False

    def audit_org(self, obj) -> Organization | None:
        org_path = getattr(self, "org_path", None)
        org_id = _org_id_of(obj, org_path) if org_path else None
        return Organization(pk=org_id) if org_id is not None else None

    def _audit(self, request, obj, verb: str, extra: dict) -> None:
        if self.admin_audit:
            admin_change_record(verb=verb, obj=obj, org=self.audit_org(obj),
                                actor=request.user, ip=client_ip(request), extra=extra)

    def construct_change_message(self, request, form, formsets, add=False):
        request._auxot_admin_changes = {"fields": form_changes(form),
                                        **formset_changes(formsets)}
        return super().construct_change_message(request, form, formsets, add)

    def _changes(self, request, message) -> dict:
        changes = getattr(request, "_auxot_admin_changes", None)
        request._auxot_admin_changes = None
        return changes if changes is not None else {"message": str(message)[:500]}

    def log_addition(self, request, obj, message):
        self._audit(request, obj, "created", self._changes(request, message))
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        changes = self._changes(request, message)
        if changes != {"fields": {}}:  # Save pressed with nothing changed: no event
            self._audit(request, obj, "changed", changes)
        return super().log_change(request, obj, message)

    def delete_model(self, request, obj):
        with transaction.atomic():
            # Its row first, locked: deleted by someone else since the page read it, it is
            # not deleted (nor audited) twice; a save or an action on it waits for this.
            if not _locked(type(obj)._default_manager.filter(pk=obj.pk)):
                return
            if not self.deletions_audited_elsewhere:
                self._audit(request, obj, "deleted", {})
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # "Delete selected" logs before it deletes, outside one transaction: the rows are
        # written here, with the deletion, so a deletion that fails leaves none. The rows are
        # locked first: one deleted by someone else meanwhile is neither audited nor deleted
        # twice.
        with transaction.atomic():
            present = _locked(queryset)
            for obj in present if not self.deletions_audited_elsewhere else ():
                self._audit(request, obj, "deleted", {"deleted_with": "delete selected"})
            super().delete_queryset(request, queryset.filter(pk__in=[o.pk for o in present]))

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except (ProtectedError, RestrictedError) as exc:
            # Something that keeps it (a work item of a workflow) was added after the page
            # listed what the deletion takes: nothing was deleted (its transaction rolled
            # back); the page, shown again, lists it.
            self.message_user(request, _kept_by(exc), messages.ERROR)
            return HttpResponseRedirect(request.path)

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except (ProtectedError, RestrictedError) as exc:  # "Delete selected", as above
            self.message_user(request, _kept_by(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not (self.admin_audit and self.audit_actions):
            return actions
        return {name: (func if name == "delete_selected" else _audited_action(
            func, name, description), name_, description)
            for name, (func, name_, description) in actions.items()}


def _kept_by(exc: ProtectedError | RestrictedError) -> str:
    kept = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
    names = sorted({str(obj._meta.verbose_name_plural) for obj in kept})
    return (f"Nothing was deleted: someone else added {', '.join(names) or 'rows'} that keep "
            "it after this page was opened. See what keeps it now, then decide again.")


def _locked(queryset) -> list:
    """The queryset's rows that are still there, locked FOR UPDATE for the caller's
    transaction (re-read by primary key: a changelist's queryset may be DISTINCT or join a
    nullable relation, which FOR UPDATE refuses). A row being deleted meanwhile is waited
    for, then left out."""
    ids = list(queryset.order_by().values_list("pk", flat=True))
    return list(queryset.model._default_manager.filter(pk__in=ids).select_for_update())


def _audited_action(func: Callable, name: str, description) -> Callable:
    @functools.wraps(func)
    def action(modeladmin, request, queryset):
        with transaction.atomic():
            # Locked first: a row deleted by someone else meanwhile gets no audit row for
            # an action that could not touch it, and none is deleted under the action; the
            # action goes on with the rest (`each_still_there`'s rule) and says how many.
            selected = queryset.count()
            present = _locked(queryset)
            for obj in present:
                modeladmin._audit(request, obj, name, {"action": name})
            result = func(modeladmin, request, queryset.filter(pk__in=[o.pk for o in present]))
        bulk_message(modeladmin, request, f"“{str(description).rstrip('.')}”: done for "
                     f"{len(present)} {modeladmin.model._meta.verbose_name_plural}.",
                     selected - len(present))
        return result

    return action


def audit_every_admin(site: admin.AdminSite) -> None:
    """Give every registered admin that is not one of ours (Django's users and groups,
    django-q2's schedules and tasks) the same audit trail. Run once, after autodiscover."""
    for model, model_admin in list(site._registry.items()):
        if not isinstance(model_admin, AuditedAdminMixin):
            audited = type(type(model_admin).__name__, (AuditedAdminMixin, type(model_admin)),
                           {"__module__": type(model_admin).__module__,
                            "audit_actions": True})
            site._registry[model] = audited(model, site)


EDIT_VERSION = "_auxot_version"  # the change form's hidden field (admin/change_form.html)
EDIT_VERSION_CONTEXT = "auxot_edit_version"


def _field_values(obj: Model, fields) -> dict[str, object]:
    """The stored values of `obj`'s model fields that a form edits (a many-to-many field
    as its sorted ids)."""
    values = {}
    for name in fields:
        try:
            field = obj._meta.get_field(name)
        except FieldDoesNotExist:
            continue  # a form-only field (a secret typed once, a confirmation)
        if field.many_to_many:
            values[name] = sorted(str(pk) for pk in getattr(obj, name).values_list(
                "pk", flat=True))
        elif field.concrete:
            values[name] = field.value_from_object(obj)
    return values


class OrgScopedAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Base for every Auxot ModelAdmin: scope by organization, authorize by role.

    `org_path` is the lookup from the model to its Organization ("org", "workflow__org", or
    "pk" for Organization itself). The role sets say who may view, add, change and delete,
    and who may run the changelist actions.
    """

    org_path = "org"
    # Fields a page links to this changelist by, beyond its list filters and date hierarchy
    # (`?replay_batch__id__exact=` from a bulk replay): see `lookup_allowed`.
    querystring_fields: tuple[str, ...] = ()
    # False for rows only the product writes (work items, deliveries): no add page for anyone,
    # superusers included (their form could not make a valid row).
    admin_adds = True
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

    def require_role(self, request: HttpRequest, roles: Collection[str], obj: Model) -> None:
        """`require_role` for one of this admin's objects (its organization via org_path)."""
        require_role(request, roles, obj, org_path=self.org_path)

    def get_ordering(self, request):
        """Newest first wherever rows have a `created_at` and the admin names no order:
        Django would sort by the primary key, and ours are UUIDs (work items, deliveries,
        audit events): a history in random order."""
        ordering = super().get_ordering(request)
        if not ordering and any(f.name == "created_at" for f in self.model._meta.fields):
            return ["-created_at", "-pk"]
        return ordering

    # --- redacted fields -------------------------------------------------------------
    url_redacted = _url_shown("url", "URL")
    callback_url_redacted = _url_shown("callback_url", "callback URL")
    base_url_redacted = _url_shown("base_url", "base URL")

    def _redacted_here(self) -> list[str]:
        names = {field.name for field in self.model._meta.fields}
        return sorted(name for name in REDACTED_FIELDS if name in names)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return fields + [name + _REDACTED_SUFFIX for name in self._redacted_here()
                         if name + _REDACTED_SUFFIX not in fields]

    def get_form(self, request, obj=None, change=False, **kwargs):
        """An existing object's organization is shown, never changed (for superusers too):
        moved on its page by an admin of both organizations, a workflow took its work history
        to the other organization's members and auditors and left its intakes pointing across
        organizations. Disabled rather than read-only, so that the form still checks the
        object's per-organization unique names with it (a duplicate would be a 500).

        A change form sent with the version of the object it was opened on is refused when
        the object (or a row of an editable inline) was saved by someone else since."""
        form = credential_free_form(super().get_form(request, obj, change=change, **kwargs))
        if obj is not None and "org" in form.base_fields:
            form.base_fields["org"] = copy.copy(form.base_fields["org"])
            form.base_fields["org"].disabled = True
        opened_on = request.POST.get(EDIT_VERSION) if request.method == "POST" else None
        if obj is not None and opened_on:
            form = self._form_checking_version(form, request, obj, opened_on)
        return form

    # --- two people editing one object -------------------------------------------------
    def edit_version(self, request, obj, *, lock: bool = False) -> str:
        """A keyed digest of what this page edits on `obj` as stored now: the change form's
        fields and every editable inline's rows. Another admin's save changes it; traffic
        (a key's last use, a delivery's state) does not, since the form does not edit it.
        `lock`: read the object's row FOR UPDATE first (the check and the save that follows
        it in the admin's transaction are one step for concurrent saves)."""
        stored = type(obj)._default_manager.filter(pk=obj.pk)
        if lock:
            stored = stored.select_for_update(of=("self",))
        current = stored.first()
        if current is None:
            return ""
        form = self.get_form(request, current, change=True)
        parts = [["", _field_values(current, form.base_fields)]]
        for inline in self.get_inline_instances(request, current):
            if not (inline.has_change_permission(request, current)
                    or inline.has_delete_permission(request, current)):
                continue  # read-only rows (a delivery log) change with traffic, not edits
            formset = inline.get_formset(request, current)
            rows = formset(instance=current, queryset=inline.get_queryset(request))
            parts.append([formset.model._meta.label, [
                [str(row.pk), _field_values(row, formset.form.base_fields)]
                for row in rows.get_queryset().order_by("pk")]])
        payload = json.dumps(parts, default=str, sort_keys=True)
        return salted_hmac("auxot.admin.edit_version", payload, algorithm="sha256").hexdigest()

    def _form_checking_version(self, form, request, obj, opened_on: str):
        model_admin = self

        class VersionChecked(form):
            def clean(self):
                cleaned = super().clean()
                current = model_admin.edit_version(request, obj, lock=True)
                if not current:  # its row is gone (waited for, if it was being deleted)
                    raise ValidationError(
                        f"This {obj._meta.verbose_name} was deleted by someone else after "
                        "you opened this page, so nothing was saved.", code="gone")
                if current != opened_on:
                    raise ValidationError(
                        f"Someone else saved this {obj._meta.verbose_name} after you opened "
                        "this page, so your changes were not saved (they would have undone "
                        "theirs). Reload the page to see what it holds now (the audit log "
                        "says who changed what), then make your change again.", code="stale")
                return cleaned

        VersionChecked.__name__ = VersionChecked.__qualname__ = form.__name__
        # A ModelForm subclass builds its fields from the model again: keep the form's own
        # (the organization disabled above, the redactions).
        VersionChecked.base_fields = form.base_fields
        return VersionChecked

    def render_change_form(self, request, context, add=False, change=False, form_url="",
                           obj=None):
        if change and obj is not None and self.has_change_permission(request, obj):
            # A form sent back with errors keeps the version it was opened on: a refresh of
            # it here would let the next submit undo what someone saved meanwhile.
            context[EDIT_VERSION_CONTEXT] = (
                (request.POST.get(EDIT_VERSION) if request.method == "POST" else None)
                or self.edit_version(request, obj))
        return super().render_change_form(request, context, add=add, change=change,
                                          form_url=form_url, obj=obj)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("get_fieldsets")
        if own is not None:  # an admin that lays out its own page: redacted all the same

            @functools.wraps(own)
            def get_fieldsets(self, request, obj=None):
                return self._fieldsets_redacted(request, obj, own(self, request, obj))

            cls.get_fieldsets = get_fieldsets

    def get_fieldsets(self, request, obj=None):
        return self._fieldsets_redacted(request, obj, super().get_fieldsets(request, obj))

    def _fieldsets_redacted(self, request, obj, fieldsets):
        """A field of REDACTED_FIELDS that this page shows read-only (to a viewer, or read-only
        for everyone) is shown through `url_redact`; one it edits stays whole. Idempotent."""
        redacted = self._redacted_here()
        if not redacted:
            return fieldsets
        viewing = obj is not None and not self.has_change_permission(request, obj)
        readonly = set(self.get_readonly_fields(request, obj)) if not viewing else set()
        hidden = {name for name in redacted if viewing or name in readonly}
        edited = set(redacted) - hidden
        seen: set[str] = set()

        def shown(names):
            for name in names:
                if isinstance(name, list | tuple):
                    yield tuple(shown(name))
                    continue
                if name in hidden:
                    name += _REDACTED_SUFFIX
                elif name.endswith(_REDACTED_SUFFIX) and name[:-len(_REDACTED_SUFFIX)] in edited:
                    continue  # the form shows the field itself
                if name not in seen:
                    seen.add(name)
                    yield name

        return [(title, {**options, "fields": list(shown(options["fields"]))})
                for title, options in fieldsets]

    def get_list_filter(self, request):
        """A relation's filter lists only the related rows of this user's organizations.
        Django's default (`RelatedFieldListFilter`) lists every row of the related model:
        every organization's workflows, intakes, teams and names, to anyone with a
        changelist."""
        return [_scoped_filter(self.model, entry) for entry in super().get_list_filter(request)]

    def lookup_allowed(self, lookup, value, request=None):
        """A changelist's querystring filters only on what its page offers: its list
        filters, its date hierarchy and `querystring_fields`. Django also lets it filter on
        any field of the model itself (`?url__contains=`, `?extra__icontains=`,
        `?digest__startswith=`): a field shown redacted, a key's digest or a ciphertext
        could be read back a character at a time by counting the rows each guess leaves.
        And on an offered field, only the lookups its filter's links use (FILTER_LOOKUPS;
        the date hierarchy's year, month and day, as dates): a transform's bad value
        (`?created_at__year=99999999`) raised mid-query, a 500; now a 400."""
        if any(part in REDACTED_FIELDS for part in lookup.split(LOOKUP_SEP)):
            return False
        parts, rest = _lookup_split(self.model, lookup)
        path = LOOKUP_SEP.join(parts) or None
        if path is not None:
            if path not in self.filterable_paths():
                return False
            if rest and path == self.date_hierarchy and len(rest) == 1 \
                    and rest[0] in HIERARCHY_PARTS:
                if not _hierarchy_value_ok(rest[0], value):
                    return False
            elif (len(rest) > 1 or (rest and rest[0] not in FILTER_LOOKUPS)
                  or not _integer_values_fit(self.model, path, rest, value)):
                return False
        return super().lookup_allowed(lookup, value, request)

    def filterable_paths(self) -> frozenset[str]:
        """The field paths this changelist's querystring may filter on."""
        names = [entry if isinstance(entry, str) else entry[0]
                 for entry in self.list_filter if isinstance(entry, (str, tuple, list))]
        names += [self.date_hierarchy] if self.date_hierarchy else []
        names += list(self.querystring_fields)
        return frozenset(filter(None, (filter_path(self.model, name) for name in names)))

    # Django's search is one OR over every search field per word, all ANDed: 2,000 one-letter
    # words (a 4 KB querystring) made a query PostgreSQL planned for two minutes (the
    # delivery log's search joins two tables), and one SQLite refused (a 500). Any viewer.
    max_search_words = 10

    def get_search_results(self, request, queryset, search_term):
        """Django's search, of at most `max_search_words` words: a longer one finds nothing
        and says why (the list's own page, not an error page)."""
        for words, _word in enumerate(smart_split(search_term), start=1):
            if words > self.max_search_words:
                self.message_user(request, f"Search for at most {self.max_search_words} "
                                  "words: this search was not run.", messages.ERROR)
                return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)

    def get_object(self, request, object_id, from_field=None):
        """The object if this user may see it; otherwise 404 (Django would redirect to the
        index saying it does not exist): another org's object looks exactly like none."""
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("Not found.")
        return obj

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
        org_id = self.obj_org_id(obj)
        # An object without an organization is no org's: only superusers (never "any org").
        if org_id is None:
            return request.user.is_superuser
        return has_role(request, roles, org_id)

    def has_module_permission(self, request):
        return self._allowed(request, self.view_roles)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, self.view_roles, obj)

    def has_add_permission(self, request):
        return self.admin_adds and self._allowed(request, self.add_roles)

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, self.change_roles, obj)

    def has_delete_permission(self, request, obj=None):
        return self._allowed(request, self.delete_roles, obj)

    def changelist_view(self, request, extra_context=None):
        # A forged selection with a malformed id would crash the pk__in lookup (500): a 400.
        pk = self.model._meta.pk
        for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
            try:
                pk.to_python(value)
            except ValidationError:
                raise BadRequest("A selected id is malformed.") from None
        return super().changelist_view(request, extra_context)

    def get_actions(self, request):
        # Only hides the menu from users who hold the role nowhere; `org_action` is the check.
        if not self._allowed(request, self.action_roles):
            return {}
        return super().get_actions(request)


class ScopedInlineMixin:
    """Inlines follow their parent's change permission (auditors see them read-only)."""

    def _parent_admin(self) -> admin.ModelAdmin:
        return self.admin_site.get_model_admin(self.parent_model)

    def _parent_allows(self, request, obj) -> bool:
        return self._parent_admin().has_change_permission(request, obj)

    def has_add_permission(self, request, obj=None):
        return self._parent_allows(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._parent_allows(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._parent_allows(request, obj)

    def has_view_permission(self, request, obj=None):
        return self._parent_admin().has_view_permission(request, obj)

    def get_formset(self, request, obj=None, **kwargs):
        """Its rows' text refuses a credential as its parent's form does (a step's name)."""
        formset = super().get_formset(request, obj, **kwargs)
        formset.form = credential_free_form(formset.form)
        return formset


class ReadOnlyInlineMixin:
    """A record shown on its parent's page (attempts, deliveries, a panel of links): nobody
    adds, edits or deletes it there; who may view it is the parent's rule."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ShownOnce:
    """Secrets shown once, after a redirect (so a reload cannot post again: a second key, a
    second intake, a second rotation): into the session, encrypted (Django signs session
    data but does not encrypt it, and a redirect never followed would leave it in the
    sessions table and its backups), and out again by the page that shows them, within
    `within` seconds."""

    def __init__(self, session_key: str, purpose: str, within: int = 300):
        self.session_key, self.purpose, self.within = session_key, purpose, within

    def put(self, request: HttpRequest, secrets: dict, **meta) -> None:
        """`secrets` by object id; `meta`: what the page needs besides (plain values)."""
        request.session[self.session_key] = {
            **meta, "secrets": {str(pk): crypto.encrypt(secret, purpose=self.purpose)
                                for pk, secret in secrets.items()}}

    def take(self, request: HttpRequest, ids) -> tuple[dict[str, str], bool, dict]:
        """(the secrets of these object ids by id, whether one was too late, the meta),
        taken out of the session: a second call finds none of them."""
        stashed = request.session.get(self.session_key) or {}
        entries = stashed.get("secrets") or {}
        secrets, late = {}, False
        for pk in map(str, ids):
            token = entries.pop(pk, None)
            if token is None:
                continue
            try:
                secrets[pk] = crypto.decrypt(token, purpose=self.purpose, ttl=self.within)
            except crypto.DecryptionError:
                late = True
        if entries:
            request.session[self.session_key] = stashed
        else:
            request.session.pop(self.session_key, None)
        return secrets, late, {k: v for k, v in stashed.items() if k != "secrets"}

    def waiting(self, request: HttpRequest) -> list[str]:
        """The object ids whose secrets wait in this session."""
        return list((request.session.get(self.session_key) or {}).get("secrets") or {})
