"""Autocomplete is the admin's other way to list another model's rows: for every registered
model's every relation, an outsider's autocomplete shows none of another organization's."""

from django.contrib import admin

from tests.conftest import make_workflow


def test_no_autocomplete_lists_another_organizations_rows(client, cast, intake_a):
    make_workflow(cast.org_a, [("transform", {})], name="Secretive flow")
    client.force_login(cast.outsider_b)
    asked = 0
    for model, _model_admin in admin.site._registry.items():
        for field in model._meta.get_fields():
            if not (field.is_relation and field.concrete and field.related_model):
                continue
            asked += 1
            response = client.get("/admin/autocomplete/", {
                "app_label": model._meta.app_label, "model_name": model._meta.model_name,
                "field_name": field.name, "term": ""})
            body = response.content.decode()
            assert response.status_code in (200, 403, 404), (model, field.name)
            for name in ("Org A", "Secretive flow", "Intake A", "Platform", "admin_a"):
                assert name not in body, (model, field.name, body[:300])
    assert asked > 10
