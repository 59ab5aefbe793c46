"""The work history's search box: a pasted work id is one indexed read (the substring search
of id, correlation id and request id read every item in reach: 0.7-1.0 s on a 200,000-item
history), and everything it found before it still finds."""

import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.conftest import trigger
from workflows.models import WorkItem

pytestmark = pytest.mark.django_db
PAGE = "/admin/workflows/workitem/"


@pytest.fixture
def items(api, intake_a, member_token):
    correlation = str(uuid.uuid4())  # callers often send a UUID as their correlation id
    ids = [trigger(api, intake_a.pk, member_token, HTTP_AUXOT_CORRELATION_ID=cid).json()[
        "work_id"] for cid in (correlation, "order-4711", "order-4712")]
    return ids, correlation


@pytest.fixture
def admin_a_client(cast):
    client = Client()
    client.force_login(cast.admin_a)
    return client


def _found(client, term: str) -> tuple[set[str], list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(PAGE, {"q": term})
    assert response.status_code == 200
    shown = {str(item.pk) for item in response.context["cl"].result_list}
    return shown, [q["sql"] for q in queries.captured_queries]


def test_a_work_id_is_looked_up_not_searched(admin_a_client, items):
    ids, _ = items
    shown, sql = _found(admin_a_client, f"  {ids[1]} ")
    assert shown == {ids[1]}
    assert not any("LIKE" in statement.upper() for statement in sql)


def test_what_the_substring_search_found_it_still_finds(admin_a_client, items):
    ids, correlation = items
    assert _found(admin_a_client, correlation)[0] == {ids[0]}  # a UUID, not a work id
    assert _found(admin_a_client, "order-471")[0] == {ids[1], ids[2]}
    assert _found(admin_a_client, ids[2][:8])[0] == {ids[2]}  # part of a work id
    request_id = WorkItem.objects.get(pk=ids[1]).request_id
    assert request_id and _found(admin_a_client, request_id)[0] == {ids[1]}


def test_another_organizations_work_id_finds_nothing(cast, items):
    ids, _ = items
    outsider = Client()
    outsider.force_login(cast.outsider_b)
    assert _found(outsider, ids[0])[0] == set()


def test_a_whole_correlation_id_is_looked_up_not_searched(admin_a_client, items):
    """A caller pastes the correlation id it sent (a UUID or its own order number): one read
    of the partial index `workitem_correlation`, not a substring match over every item in
    reach. Only the items with exactly that id; part of one is still a substring search."""
    ids, correlation = items
    for term, expected in ((correlation, ids[0]), ("order-4711", ids[1]),
                           (" order-4712 ", ids[2])):
        shown, sql = _found(admin_a_client, term)
        assert shown == {expected}
        assert not any("LIKE" in statement.upper() for statement in sql), term
    shown, sql = _found(admin_a_client, "ORDER-4711")  # another case: searched as before
    assert shown == {ids[1]} and any("LIKE" in statement.upper() for statement in sql)


def test_another_organizations_correlation_id_finds_nothing(cast, items):
    outsider = Client()
    outsider.force_login(cast.outsider_b)
    assert _found(outsider, "order-4711")[0] == set()


def test_the_correlation_index_is_built_partial_in_the_database():
    """The migration built it (concurrently on PostgreSQL) and only for items that carry a
    correlation id: a trigger without `Auxot-Correlation-Id` (most) writes no entry."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT indexdef FROM pg_indexes "
                           "WHERE indexname = 'workitem_correlation'")
        else:
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'workitem_correlation'")
        [(definition,)] = cursor.fetchall()
    assert "(correlation_id" in definition.replace('"', "")
    assert "WHERE" in definition.upper() and "''" in definition
