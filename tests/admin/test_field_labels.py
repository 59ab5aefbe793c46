"""The admin labels fields as the README and the tutorial name them.

A newcomer following "Teams → Add: organization Demo Co" met a field labelled "Org" (the
field's name), on every form and list column that shows one; the README's provider fields
"API key secret" and "API key env" read "Api key secret" and "Api key env", a work item's
"Created by ip", "Correlation id" and "Request id"."""

import re

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.utils import label_for_field

from auxot.models import Organization


def _org_fields():
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if getattr(field, "related_model", None) is Organization and field.concrete:
                yield model, field


def test_every_field_that_points_at_an_organization_is_labelled_organization():
    fields = list(_org_fields())
    assert len(fields) >= 8, fields  # teams, memberships, keys, intakes, workflows, ...
    assert [f"{model.__name__}.{field.name}: {field.verbose_name}" for model, field in fields
            if field.verbose_name != "organization"] == []


def test_every_admin_page_shows_the_organization_as_organization():
    shown = []
    for model, model_admin in admin.site._registry.items():
        names = {*model_admin.list_display, *model_admin.list_filter,
                 *(model_admin.fields or []), *model_admin.readonly_fields}
        for name in names:
            if isinstance(name, str) and name in {f.name for _m, f in _org_fields()
                                                  if _m is model}:
                shown.append((model.__name__, label_for_field(name, model, model_admin)))
    assert len(shown) >= 5, shown
    assert [(model, label) for model, label in shown if label != "organization"] == []


ACRONYM_IN_LOWER_CASE = re.compile(r"\b(url|urls|api|ip|id|ids|json|http|https|uuid|csv)\b")
PROJECT_APPS = {"auxot", "apikeys", "workflows", "intakes"}


def test_no_field_label_writes_an_acronym_in_lower_case():
    """Django makes a label from the field's name (`request_id` → "Request id")."""
    fields = [(model, field) for model in apps.get_models()
              if model._meta.app_label in PROJECT_APPS
              for field in model._meta.get_fields() if field.concrete]
    assert len(fields) > 100  # every model of the project's apps
    assert [f"{model.__name__}.{field.name}: {field.verbose_name}" for model, field in fields
            if ACRONYM_IN_LOWER_CASE.search(str(field.verbose_name))] == []
