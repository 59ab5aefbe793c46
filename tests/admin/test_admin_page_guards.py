"""What the admin's generic pages must not offer, enumerated over every registered model.

An add page exists only where its form can make a valid row: rows the product alone writes
(work items, callback deliveries, audit events, endpoints' breakers, django-q's records) have
none, for superusers too (a superuser's form for them failed with a 500). And no changelist
filters by querystring on a field it does not offer as a filter (one shown redacted, a
digest, a ciphertext). And a history lists newest first."""

import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, reverse

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


def _redacted_lookups():
    """Every (model, lookup) by which a changelist's querystring could reach a redacted
    field: the model's own, and one relation away."""
    from auxot.admin_base import REDACTED_FIELDS, OrgScopedAdmin

    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, OrgScopedAdmin):
            continue
        for field in model._meta.get_fields():
            if field.name in REDACTED_FIELDS:
                yield model, f"{field.name}__contains"
            elif field.is_relation and field.related_model is not None and not (
                    field.one_to_many or field.many_to_many):
                for far in field.related_model._meta.get_fields():
                    if far.name in REDACTED_FIELDS:
                        yield model, f"{field.name}__{far.name}__startswith"


def test_the_redacted_fields_are_reachable_from_several_admins():
    reached = {(model._meta.label, lookup) for model, lookup in _redacted_lookups()}
    assert ("intakes.CallbackDelivery", "url__contains") in reached
    assert ("workflows.WorkItem", "callback_url__contains") in reached
    assert ("intakes.Intake", "callback_url__contains") in reached


@pytest.mark.django_db
def test_no_changelist_filters_on_a_field_it_shows_redacted(root):
    """A callback URL's query values are shown as REDACTED; a querystring filter on the
    field (`?url__contains=token=s`) would let anyone who sees the list guess them back."""
    for model, lookup in _redacted_lookups():
        meta = model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert root.get(url).status_code == 200, meta.label
        assert root.get(url, {lookup: "token=s"}).status_code == 400, (meta.label, lookup)



def _changelists():
    from auxot.admin_base import OrgScopedAdmin

    for model, model_admin in admin.site._registry.items():
        if isinstance(model_admin, OrgScopedAdmin):
            meta = model._meta
            yield model, model_admin, reverse(
                f"admin:{meta.app_label}_{meta.model_name}_changelist")


def _unoffered_lookups():
    """Every (changelist, lookup) on a field the page does not offer as a filter: each
    concrete field of the model, and of each model one relation away."""
    for model, model_admin, url in _changelists():
        offered = model_admin.filterable_paths()
        for field in model._meta.concrete_fields:
            if field.name not in offered:
                yield url, f"{field.name}__exact"
            if field.is_relation and field.related_model is not None:
                for far in field.related_model._meta.concrete_fields:
                    path = f"{field.name}__{far.name}"
                    if not far.primary_key and path not in offered:
                        yield url, f"{path}__exact"


def test_the_unoffered_lookups_include_stored_digests_ciphertexts_and_audit_extras():
    reached = set(_unoffered_lookups())
    assert ("/admin/apikeys/apikey/", "digest__exact") in reached
    assert ("/admin/auxot/secret/", "value_encrypted__exact") in reached
    assert ("/admin/auxot/auditevent/", "extra__exact") in reached
    assert ("/admin/intakes/intake/", "signing_secret_encrypted__exact") in reached
    assert len(reached) > 100


@pytest.mark.django_db
def test_a_changelist_filters_by_querystring_only_on_what_it_offers(root):
    """Django lets a changelist filter on any field of its model: `?extra__icontains=` read
    back the audit log's redacted URLs, `?digest__startswith=` a key's digest, a character
    at a time, by counting the rows each guess left. Only offered filters are taken now."""
    for url, lookup in _unoffered_lookups():
        assert root.get(url, {lookup: "1"}).status_code == 400, (url, lookup)


@pytest.mark.django_db
def test_every_offered_filter_still_filters(root):
    for _model, model_admin, url in _changelists():
        for path in model_admin.filterable_paths():
            response = root.get(url, {f"{path}__isnull": "False"})
            assert response.status_code == 200, (url, path, response.status_code)
            assert "cl" in response.context, (url, path)  # the list itself, not ?e=1


def test_every_history_lists_newest_first_unless_its_admin_names_an_order():
    from django.test import RequestFactory

    from auxot.admin_base import OrgScopedAdmin

    request = RequestFactory().get("/")
    dated = [(model, model_admin) for model, model_admin in admin.site._registry.items()
             if isinstance(model_admin, OrgScopedAdmin)
             and any(f.name == "created_at" for f in model._meta.fields)]
    assert {m._meta.label for m, _a in dated} >= {"workflows.WorkItem", "auxot.AuditEvent",
                                                   "intakes.CallbackDelivery"}
    for model, model_admin in dated:
        ordering = list(model_admin.get_ordering(request))
        assert ordering[0] == "-created_at" or model_admin.ordering, model._meta.label


@pytest.mark.django_db
def test_the_work_history_page_shows_the_newest_item_first(root, cast):
    from datetime import timedelta

    from django.utils import timezone

    from tests.conftest import make_workflow
    from workflows.services import work_item_create

    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{echo: input}"})])
    items = [work_item_create(workflow=workflow, input={"n": n}) for n in range(6)]
    for age, item in enumerate(items):  # items[0] is the newest
        WorkItem.objects.filter(pk=item.pk).update(
            created_at=timezone.now() - timedelta(minutes=age))
    html = root.get(reverse("admin:workflows_workitem_changelist")).content.decode()
    positions = [html.index(str(item.pk)) for item in items]
    assert positions == sorted(positions)


def _object_routes(patterns=None, prefix="/admin/"):
    """Every admin route that takes an object's id, Django's own pages and ours."""
    for pattern in admin.site.get_urls() if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _object_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and re.search(r"<(\w+:)?\w*_?id>", route):
            yield route


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["root", "member"])
@pytest.mark.parametrize("bad_id", ["not-an-id", "0c10e2dd-1867-4705-8bf6-669501da6a7",
                                    "00000000-0000-0000-0000-000000000000", "99999"])
def test_no_admin_page_answers_a_malformed_or_unknown_id_with_a_500(client, cast, who,
                                                                     bad_id):
    """A work item's page and its replay took the id from the URL before the scoped lookup:
    `not-a-uuid` raised ValidationError, a 500. Every route that takes an id, both ways."""
    routes = list(_object_routes())
    assert len(routes) > 40 and any("/replay/" in r for r in routes)
    client.raise_request_exception = False
    user = (get_user_model().objects.create_superuser("root", "root@example.com", "x")
            if who == "root" else cast.member_a)
    client.force_login(user)
    for route in routes:
        url = re.sub(r"<(\w+:)?(\w+)>", lambda m: "true" if m[2] == "state" else bad_id,
                     route)
        for method in (client.get, client.post):
            status = method(url).status_code
            assert status < 500, (route, method.__name__, status)


def _pages_without_an_id(patterns=None, prefix="/admin/"):
    for pattern in admin.site.get_urls() if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _pages_without_an_id(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and "<" not in route:
            yield route.replace("^", "").replace("$", "")


@pytest.mark.django_db
def test_a_nul_in_any_admin_querystring_is_a_400(client, cast):
    """PostgreSQL refuses a NUL in a text parameter only when the query runs: a list filter
    (`?event=%00`), the audit export or an autocomplete term was a 500 there."""
    client.raise_request_exception = False
    client.force_login(cast.admin_a)
    urls = [f"{url}?{path}__exact=%00" for _model, model_admin, url in _changelists()
            for path in model_admin.filterable_paths()]
    urls += [f"{route}?q=a%00b&term=%00" for route in _pages_without_an_id()]
    assert any("export.csv" in url for url in urls) and len(urls) > 30
    for url in urls:
        assert client.get(url).status_code == 400, url


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["created_at__year=abc", "created_at__gte=garbage",
                                   "date_from=2026-02-01&date_to=2026-01-01"])
def test_the_audit_export_answers_a_bad_filter_as_its_list_does(client, cast, query):
    client.raise_request_exception = False
    client.force_login(cast.auditor_a)
    listed = client.get(f"/admin/auxot/auditevent/?{query}")
    exported = client.get(f"/admin/auxot/auditevent/export.csv?{query}")
    assert exported.status_code == listed.status_code
    if listed.status_code == 302:
        assert listed["Location"] == exported["Location"] == "/admin/auxot/auditevent/?e=1"
    elif listed.status_code == 400:  # a lookup no filter of the page uses (`__year`)
        assert query.startswith("created_at__year")
    else:  # an empty period matches no row: both answer, and the export is just its header
        assert listed.status_code == 200 and listed.context["cl"].result_count == 0
        assert len(b"".join(exported.streaming_content).decode("utf-8-sig").splitlines()) == 1


# A lookup no filter of any page uses, and values no date can take: Django handed each to the
# query, where it raised (ValueError, OverflowError, PostgreSQL's DataError for a bad regex).
UNOFFERED_TAILS = [("year", "99999999"), ("iso_year", "0"), ("date__year", "-1"),
                   ("year__gte", "99999999999999999999"), ("regex", "("), ("iregex", "("),
                   ("week_day", "99999999999999999999"), ("contains", "1"), ("range", "1,2")]


@pytest.mark.django_db
def test_no_changelist_takes_a_lookup_its_filters_do_not_use(root):
    """`?created_at__year=99999999` on the delivery log was a 500 (the year's bounds raised
    mid-query), `?created_at__regex=(` one on PostgreSQL: a page's querystring takes only
    what its filters' links use (`exact`, `in`, `isnull`, comparisons), a clear 400 else."""
    asked = 0
    for _model, model_admin, url in _changelists():
        for path in model_admin.filterable_paths():
            for tail, value in UNOFFERED_TAILS:
                status = root.get(url, {f"{path}__{tail}": value}).status_code
                assert status == 400, (url, path, tail, status)
                asked += 1
    assert asked > 100


@pytest.mark.django_db
def test_no_changelist_passes_a_number_past_64_bits_to_the_database(root):
    """`?team=99999999999999999999` on the intakes, work item, provider and secret lists was
    a 500 on SQLite (OverflowError when the query ran): every offered filter on an integer
    field or a relation to an integer key refuses it (400), for `exact`, `in` and the
    comparisons, and still takes a number that fits."""
    from django.contrib.admin.utils import get_fields_from_path

    from auxot.admin_base import INTEGER_TYPES

    asked = 0
    for model, model_admin, url in _changelists():
        for path in model_admin.filterable_paths():
            field = get_fields_from_path(model, path)[-1]
            target = getattr(field, "target_field", None) if field.is_relation else field
            if target is None or target.get_internal_type() not in INTEGER_TYPES:
                continue
            for lookup, value in ((path, "99999999999999999999"),
                                  (f"{path}__exact", "-99999999999999999999"),
                                  (f"{path}__in", "1,99999999999999999999"),
                                  (f"{path}__gte", "9223372036854775808")):
                status = root.get(url, {lookup: value}).status_code
                assert status == 400, (url, lookup, status)
                asked += 1
            assert root.get(url, {path: "9223372036854775807"}).status_code == 200, (url, path)
            for malformed in ("--5", "+-1", "1e99"):  # no number: Django's own error page
                status = root.get(url, {path: malformed}).status_code
                assert status in (302, 400), (url, path, malformed, status)
    assert asked >= 16


@pytest.mark.django_db
@pytest.mark.parametrize("query", [
    "created_at__year=9999",  # the next year's bound is no date: a 500
    "created_at__year=9999&created_at__month=12",
    "created_at__year=99999999999999999999",  # OverflowError, not the ValueError Django catches
    "created_at__year=2026&created_at__month=99999999999999999999",
    "created_at__year=2026&created_at__month=2&created_at__day=0",
    "created_at__year=abc",
])
def test_the_date_hierarchy_refuses_a_date_it_cannot_bound(root, query):
    assert root.get(f"/admin/workflows/workitem/?{query}").status_code == 400


@pytest.mark.django_db
def test_the_date_hierarchy_still_narrows_by_year_month_and_day(root):
    for query in ("created_at__year=2026", "created_at__year=2026&created_at__month=2",
                  "created_at__year=2024&created_at__month=2&created_at__day=29"):
        response = root.get(f"/admin/workflows/workitem/?{query}")
        assert response.status_code == 200 and "cl" in response.context, query


@pytest.mark.django_db
def test_no_searchable_list_plans_a_search_of_thousands_of_words(root):
    """Each word of a search is an OR over every search field, all ANDed: a 4 KB querystring
    of one-letter words built a query PostgreSQL planned for minutes (a 500 on SQLite)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    searched = 0
    for _model, model_admin, url in _changelists():
        if not model_admin.search_fields:
            continue
        with CaptureQueriesContext(connection) as queries:
            response = root.get(url, {"q": " ".join(["a"] * 2000)})
        assert response.status_code == 200, url
        assert "at most" in response.content.decode(), url
        assert max(q["sql"].upper().count("LIKE") for q in queries.captured_queries) < 50, url
        searched += 1
    assert searched >= 5
