"""An add page exists only where its form can make a valid row: rows the product alone writes
(work items, callback deliveries, audit events, endpoints' breakers, django-q's records) have
none, for superusers too (a superuser's form for them failed with a 500)."""

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

from intakes.models import CallbackDelivery
from workflows.models import WorkItem

# Models an admin may add in the admin, by label. Every other registered model must refuse.
ADDABLE = {"intakes.Intake", "workflows.Workflow", "workflows.Provider", "auxot.Organization",
           "auxot.Team", "auxot.Membership", "auxot.Secret", "apikeys.ApiKey", "auth.Group",
           "auth.User", "django_q.Schedule"}


@pytest.fixture
def root(client):
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com",
                                                                 "x"))
    return client


@pytest.mark.django_db
def test_every_registered_model_has_an_add_page_only_if_it_is_addable(root):
    labels = {model._meta.label for model in admin.site._registry}
    assert labels >= ADDABLE, ADDABLE - labels  # the list names registered models only
    for model in admin.site._registry:
        meta = model._meta
        status = root.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_add")).status_code
        expected = 200 if meta.label in ADDABLE else 403
        assert status == expected, (meta.label, status)


@pytest.mark.django_db
@pytest.mark.parametrize("model", [WorkItem, CallbackDelivery])
def test_a_forged_add_of_a_product_written_row_is_refused_and_writes_nothing(root, model):
    meta = model._meta
    response = root.post(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"),
                         {"status": "pending", "state": "pending"})
    assert response.status_code == 403
    assert not model.objects.exists()
