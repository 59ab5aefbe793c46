"""The delivery log from the operator's chair: why each delivery waits (every state), the
list's endpoint and next-attempt columns, its filters and exact-id search, and closing an
endpoint's open circuit (audited, its own organization's endpoint only)."""

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from auxot.models import AuditEvent
from intakes.callbacks import (
    callback_delivery_create,
    callback_delivery_process,
    callback_delivery_redeliver,
    endpoint_circuit_close,
    endpoint_key,
    endpoint_outcome,
    endpoints_paused,
)
from intakes.models import CallbackAttempt, CallbackDelivery, CallbackEndpoint
from tests.callback_helpers import finished_item

pytestmark = pytest.mark.django_db
DELIVERIES = "/admin/intakes/callbackdelivery/"
State = CallbackDelivery.State


def _delivery(intake, **fields) -> CallbackDelivery:
    delivery = callback_delivery_create(work_item=finished_item(intake))
    if fields:
        CallbackDelivery.objects.filter(pk=delivery.pk).update(**fields)
        delivery.refresh_from_db()
    return delivery


def _open(key: str, *, until=None) -> CallbackEndpoint:
    now = timezone.now()
    endpoint, _ = CallbackEndpoint.objects.update_or_create(key=key, defaults={
        "consecutive_failures": 20, "failing_since": now - timedelta(minutes=3),
        "open_until": until or now + timedelta(minutes=5), "opened_count": 1})
    return endpoint


# One row per situation a delivery can be in: how to put it there, and what its page says.
def _delivered(intake):
    return _delivery(intake, state=State.DELIVERED, attempts=2, last_status=200,
                     delivered_at=timezone.now(), next_attempt_at=None)


def _gave_up(intake):
    return _delivery(intake, state=State.FAILED, attempts=8, last_status=500,
                     last_error="HTTP 500; no attempts left", next_attempt_at=None)


def _disabled(intake):
    return _delivery(intake, state=State.DISABLED, attempts=1, last_status=410,
                     last_error="the receiver answered 410 Gone", next_attempt_at=None)


def _in_flight(intake):
    now = timezone.now()
    delivery = _delivery(intake, state=State.DELIVERING, attempts=3,
                         next_attempt_at=now + timedelta(seconds=35), lease_token="t" * 32)
    CallbackAttempt.objects.create(delivery=delivery, number=3, started_at=now, url="-")
    return delivery


def _first_later(intake):
    return _delivery(intake, attempts=0, next_attempt_at=timezone.now() + timedelta(hours=1))


def _backing_off(intake):
    return _delivery(intake, attempts=2, last_status=503, last_error="HTTP 503",
                     next_attempt_at=timezone.now() + timedelta(minutes=5))


def _behind_open_circuit(intake):
    delivery = _delivery(intake, attempts=2, last_error="timed out after 5 s",
                         next_attempt_at=timezone.now() - timedelta(seconds=1))
    _open(delivery.endpoint)
    return delivery


def _at_the_host_cap(intake, settings=None):
    delivery = _delivery(intake, attempts=0, next_attempt_at=timezone.now() - timedelta(seconds=9))
    for _ in range(4):  # AUXOT_CALLBACK_PER_HOST_CONCURRENCY's default
        _delivery(intake, state=State.DELIVERING, attempts=1,
                  next_attempt_at=timezone.now() + timedelta(seconds=30))
    return delivery


def _due_no_sender(intake):
    return _delivery(intake, attempts=0, next_attempt_at=timezone.now() - timedelta(minutes=2))


SITUATIONS = {
    "delivered": (_delivered, ["Delivered", "on attempt 2"]),
    "gave up": (_gave_up, ["Gave up after 8 attempt(s)", "HTTP 500; no attempts left",
                           "Redeliver now"]),
    "disabled": (_disabled, ["Gave up after 1 attempt(s)", "410 Gone"]),
    "in flight": (_in_flight, ["Attempt 3 in flight since", "lease ends"]),
    "first attempt later": (_first_later, ["First attempt at"]),
    "backing off": (_backing_off, ["Backing off: attempt 3 at", "after attempt 2 failed",
                                   "HTTP 503"]),
    "circuit open": (_behind_open_circuit, ["Waiting for its endpoint: failing since",
                                            "20 failed attempts in a row", "paused until"]),
    "host cap": (_at_the_host_cap, ["waiting for a sender: 4 attempts to its endpoint are in "
                                    "flight", "at most 4"]),
    "due, no sender": (_due_no_sender, ["waiting for a dispatcher", "qcluster"]),
}


def test_every_state_has_a_situation():
    """A new delivery state must say on its page why it waits (or that it is settled)."""
    covered = {"delivered": State.DELIVERED, "gave up": State.FAILED, "disabled":
               State.DISABLED, "in flight": State.DELIVERING, "backing off": State.PENDING}
    assert set(covered.values()) == set(State)
    assert set(covered) <= set(SITUATIONS)


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_a_deliverys_page_says_what_happens_next_and_why(client, cast, cb_intake, situation):
    build, phrases = SITUATIONS[situation]
    delivery = build(cb_intake)
    client.force_login(cast.auditor_a)  # read-only viewers see it too
    page = client.get(f"{DELIVERIES}{delivery.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode().replace("&#x27;", "'")
    for phrase in phrases:
        assert phrase in html, (situation, phrase)
    assert "token=s3" not in html  # the URL's token is never shown


def test_the_list_shows_the_endpoint_and_what_the_next_attempt_waits_for(client, cast,
                                                                         cb_intake):
    paused = _behind_open_circuit(cb_intake)
    flying = _in_flight(cb_intake)
    client.force_login(cast.member_a)
    response = client.get(DELIVERIES)
    html = response.content.decode()
    rows = {row.pk: row for row in response.context["cl"].result_list}
    assert rows[paused.pk].paused_until is not None
    assert "(endpoint failing)" in html and "in flight" in html
    # The lease's end is no "next attempt": the list never shows it as one.
    lease_end = f"{flying.next_attempt_at:%Y-%m-%d %H:%M:%S UTC}"
    assert lease_end not in html
    # The endpoint column links to the endpoint's deliveries; the host shows, nothing else.
    assert "?" + urlencode({"endpoint_key": paused.endpoint}) in html
    assert "token=s3" not in html


def test_filters_by_endpoint_open_circuit_and_date(client, cast, cb_intake, receiver):
    paused = _behind_open_circuit(cb_intake)
    other_url = receiver.url_for("/other").replace("localhost", "127.0.0.1")
    elsewhere = callback_delivery_create(work_item=finished_item(
        cb_intake, callback_url=other_url))
    assert elsewhere.endpoint != paused.endpoint
    old = _delivery(cb_intake, created_at=timezone.now() - timedelta(days=40))
    client.force_login(cast.auditor_a)

    def shown(query: str) -> set:
        response = client.get(DELIVERIES + query)
        assert response.status_code == 200, query
        return {row.pk for row in response.context["cl"].result_list}

    assert shown("?endpoint_key=open") == {paused.pk, old.pk}  # the intake's endpoint
    assert elsewhere.pk in shown(f"?endpoint_key={elsewhere.endpoint}")
    assert paused.pk not in shown(f"?endpoint_key={elsewhere.endpoint}")
    week_ago = (timezone.now() - timedelta(days=7)).date().isoformat()
    recent = shown(f"?created_at__gte={week_ago}")
    assert old.pk not in recent and {paused.pk, elsewhere.pk} <= recent
    assert shown("?state=pending") >= {paused.pk} and old.pk in shown("?state__exact=pending")
    # The endpoint filter offers this org's failing endpoints, never another org's.
    _open(endpoint_key("https://b-only.example", cast.org_b.pk))
    page = client.get(DELIVERIES).content.decode()
    assert "b-only.example" not in page


def test_search_by_webhook_id_or_work_id_is_an_exact_indexed_read(client, cast, cb_intake):
    one, two = _delivery(cb_intake), _delivery(cb_intake)
    client.force_login(cast.auditor_a)
    for term, expected in ((one.webhook_id, one), (str(two.work_item_id), two)):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(DELIVERIES, {"q": term})
        assert [row.pk for row in response.context["cl"].result_list] == [expected.pk]
        on_deliveries = [q["sql"].upper() for q in queries.captured_queries
                         if "callbackdelivery" in q["sql"]]
        assert not any("LIKE" in sql for sql in on_deliveries), term
        # Nor a count of every delivery in reach for "(N total)": only the matches'.
        counts = [sql for sql in on_deliveries if "COUNT(" in sql]
        assert len(counts) == 1 and ("WEBHOOK_ID" in counts[0] or "WORK_ITEM_ID" in counts[0])
    # A part of an id still finds it (the substring search).
    response = client.get(DELIVERIES, {"q": one.webhook_id[4:16]})
    assert [row.pk for row in response.context["cl"].result_list] == [one.pk]


def test_closing_an_open_circuit_sends_the_waiting_deliveries_now(client, cast, cb_intake):
    delivery = _behind_open_circuit(cb_intake)
    key = delivery.endpoint
    assert key in endpoints_paused(now=timezone.now())[0]
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "close_endpoint_circuit",
                                         "_selected_action": [str(delivery.pk)]}, follow=True)
    assert "Circuit closed for" in response.content.decode()
    endpoint = CallbackEndpoint.objects.get(key=key)
    assert endpoint.open_until is None and key not in endpoints_paused(now=timezone.now())[0]
    [row] = AuditEvent.objects.filter(event="callback.endpoint_closed")
    assert row.org == cast.org_a and row.actor_user == cast.admin_a
    assert row.extra["consecutive_failures"] == 20 and "token=s3" not in str(row.extra)
    # The count is kept: one more failure opens it again (no twenty attempts burnt first).
    endpoint_outcome(key=key, ok=False, error="HTTP 503")
    assert CallbackEndpoint.objects.get(key=key).open_until is not None
    # Nothing open: nothing closed, nothing audited.
    endpoint_circuit_close(key=key, org=cast.org_a)  # open again: closes
    assert not endpoint_circuit_close(key=key, org=cast.org_a)
    assert AuditEvent.objects.filter(event="callback.endpoint_closed").count() == 2


def test_an_endpoint_of_another_org_is_never_closed_by_this_one(cast):
    key = endpoint_key("https://hooks.example", cast.org_b.pk)
    _open(key)
    assert not endpoint_circuit_close(key=key, org=cast.org_a)
    assert CallbackEndpoint.objects.get(key=key).open_until is not None


@pytest.mark.parametrize("role", ["auditor_a", "member_a"])
def test_viewers_cannot_close_a_circuit_or_redeliver(client, cast, cb_intake, role):
    delivery = _behind_open_circuit(cb_intake)
    before = delivery.attempts, delivery.schedule_base
    client.force_login(getattr(cast, role))
    page = client.get(DELIVERIES).content.decode()
    assert "close_endpoint_circuit" not in page and "redeliver_now" not in page
    for name in ("close_endpoint_circuit", "redeliver_now"):
        client.post(DELIVERIES, {"action": name, "_selected_action": [str(delivery.pk)]})
    assert CallbackEndpoint.objects.get(key=delivery.endpoint).open_until is not None
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.schedule_base) == before
    assert not AuditEvent.objects.filter(event__startswith="callback.").exists()
    assert client.post(f"{DELIVERIES}{delivery.pk}/change/", {}).status_code == 403


def test_the_list_costs_the_same_queries_for_one_row_or_many(client, cast, cb_intake):
    """The "paused" column reads the breaker table once per page, not once per row."""
    _behind_open_circuit(cb_intake)
    client.force_login(cast.auditor_a)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(DELIVERIES).status_code == 200
        return len(captured.captured_queries)

    few = queries()
    for _ in range(4):
        _backing_off(cb_intake)
    assert queries() == few


def test_a_work_items_page_says_what_its_callback_waits_for(client, cast, cb_intake):
    """The work item's page shows its delivery's next step, never a lease's end as the
    next attempt."""
    flying = _in_flight(cb_intake)
    client.force_login(cast.auditor_a)
    html = client.get(f"/admin/workflows/workitem/{flying.work_item_id}/change/").content.decode()
    assert "Attempt 3 in flight since" in html


def test_redelivering_behind_an_open_circuit_says_it_waits(client, cast, cb_intake):
    delivery = _gave_up(cb_intake)
    _open(delivery.endpoint)
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "redeliver_now",
                                         "_selected_action": [str(delivery.pk)]}, follow=True)
    html = response.content.decode().replace("&#x27;", "'")
    assert "1 delivery(ies) queued" in html
    assert "1 wait behind their endpoint's open circuit" in html
    delivery.refresh_from_db()
    assert delivery.state == State.PENDING and delivery.webhook_id.startswith("msg_")


@pytest.mark.parametrize("query", [
    "created_at__year=99999999", "created_at__year=0", "created_at__iso_year=-1",
    "created_at__date__year=99999999999999999999", "created_at__year__in=99999999999999999999",
    "created_at__regex=(", "created_at__iregex=(",
])
def test_the_delivery_log_refuses_a_date_lookup_its_filter_does_not_offer(client, cast,
                                                                          cb_intake, query):
    """The date filter's links use `created_at__gte` and `__lt`; any other lookup on the
    column (`?created_at__year=99999999`) raised mid-query: a 500. Now a clear 400."""
    _delivery(cb_intake)
    client.raise_request_exception = False
    client.force_login(cast.auditor_a)
    assert client.get(f"{DELIVERIES}?{query}").status_code == 400


@pytest.mark.parametrize("query", [
    "created_at__gte=bad", "created_at__gte=99999-01-01", "created_at__lt=0000-00-00",
    "created_at__in=bad", "intake__id__exact=not-a-uuid", "state__in=pending,nonsense",
    "endpoint_key=" + "x" * 5000, "created_at__gte=9999-12-31&created_at__lt=0001-01-01",
])
def test_the_delivery_log_answers_a_bad_filter_value_without_a_500(client, cast, cb_intake,
                                                                   query):
    """A bad value of a lookup the page does offer: the list itself or Django's "?e=1"."""
    _delivery(cb_intake)
    client.raise_request_exception = False
    client.force_login(cast.auditor_a)
    response = client.get(f"{DELIVERIES}?{query}")
    assert response.status_code in (200, 302), response.status_code
    if response.status_code == 302:
        assert response["Location"] == f"{DELIVERIES}?e=1"


# --- Endpoint keys made before they were per organization ------------------------------
# Until 7bd2ea5 an endpoint's key was scheme://host:port alone (or none, before 0007), one
# breaker and one cap for every tenant calling back to that host; deliveries made then keep
# that key. Another organization's deliveries to the same host share it.

@pytest.fixture
def b_intake(cast, receiver):
    from intakes.services import intake_create
    from tests.conftest import make_workflow

    workflow = make_workflow(cast.org_b, [("transform", {"expression": "{echo: input}"})],
                             name="Echo B")
    return intake_create(org=cast.org_b, workflow=workflow, name="B intake",
                         created_by=cast.outsider_b, callback_url=receiver.url_for("/b-hook"))


def _shared(delivery, key=None) -> CallbackDelivery:
    """`delivery` on the key it would have had before keys were per organization."""
    key = endpoint_key(delivery.url) if key is None else key
    CallbackDelivery.objects.filter(pk=delivery.pk).update(endpoint=key)
    delivery.refresh_from_db()
    return delivery


@pytest.mark.parametrize("old_key", ["host", "none"])
def test_redeliver_moves_a_delivery_off_an_endpoint_shared_with_other_organizations(
        client, cast, cb_intake, b_intake, receiver, settings, old_key):
    """"Redeliver now" brought an old delivery back on its shared key: its failures counted
    on the breaker that pauses the other organization's deliveries to that host (and a key
    without an organization escaped the per-organization cap). It goes on its own org's."""

    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 1
    mine = _shared(_gave_up(cb_intake), key=None if old_key == "host" else "")
    theirs = _shared(_delivery(b_intake), key=endpoint_key(mine.url) if old_key == "host"
                     else "")
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "redeliver_now",
                                         "_selected_action": [str(mine.pk)]}, follow=True)
    assert "1 delivery(ies) queued" in response.content.decode()
    mine.refresh_from_db()
    assert mine.endpoint == endpoint_key(mine.url, cast.org_a.pk)
    receiver.expect_request("/hook").respond_with_data("down", status=503)
    callback_delivery_process(delivery_id=mine.pk)
    paused = endpoints_paused(now=timezone.now())[0]
    assert mine.endpoint in paused and theirs.endpoint not in paused  # B's still go


def test_redeliver_keys_a_callers_url_as_callers_urls(client, cast, cb_intake, receiver):
    mine = _delivery(cb_intake, state=State.FAILED, next_attempt_at=None,
                     uses_intake_default=False, url=receiver.url_for("/callers/own"))
    _shared(mine)
    client.force_login(cast.admin_a)
    client.post(DELIVERIES, {"action": "redeliver_now", "_selected_action": [str(mine.pk)]})
    mine.refresh_from_db()
    assert mine.endpoint == endpoint_key(mine.url, cast.org_a.pk, caller=True)


def test_a_shared_endpoints_circuit_is_not_closed_by_one_organization_and_says_why(
        client, cast, cb_intake, b_intake):
    """Closing it would send every organization's waiting deliveries to that host: the
    action leaves it, says why, and names what moves this organization's own."""
    mine = _shared(_delivery(cb_intake, attempts=2))
    _shared(_delivery(b_intake))
    _open(mine.endpoint)
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "close_endpoint_circuit",
                                         "_selected_action": [str(mine.pk)]}, follow=True)
    html = response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    assert "shared with other organizations" in html and "Redeliver now" in html
    assert "had an open circuit" not in html  # it had one
    assert CallbackEndpoint.objects.get(key=mine.endpoint).open_until is not None
    assert not AuditEvent.objects.filter(event="callback.endpoint_closed").exists()


def test_a_shared_endpoints_counts_of_other_organizations_are_not_shown(client, cast,
                                                                         cb_intake, b_intake):
    """A delivery on a shared key read the shared breaker's failure count and the host's
    in-flight attempts: the other organization's traffic to that host."""
    mine = _shared(_delivery(cb_intake, attempts=1,
                             next_attempt_at=timezone.now() - timedelta(seconds=5)))
    endpoint = _open(mine.endpoint)
    CallbackEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=37)
    client.force_login(cast.auditor_a)
    for url in (f"{DELIVERIES}{mine.pk}/change/",
                f"/admin/workflows/workitem/{mine.work_item_id}/change/"):
        html = client.get(url).content.decode()
        assert "paused until" in html and "37 failed attempts" not in html, url
        assert "shared with other organizations" in html, url
    CallbackEndpoint.objects.filter(pk=endpoint.pk).update(open_until=None)
    for _ in range(4):  # B's attempts in flight to the host
        _shared(_delivery(b_intake, state=State.DELIVERING, attempts=1,
                          next_attempt_at=timezone.now() + timedelta(seconds=30)),
                key=mine.endpoint)
    html = client.get(f"{DELIVERIES}{mine.pk}/change/").content.decode()
    assert "4 attempts to its endpoint are in flight" not in html and "Due since" in html


def test_a_search_of_thousands_of_words_is_refused_not_planned(client, cast, cb_intake):
    """Django ANDs one OR over every search field per word: 2,000 one-letter words (a 4 KB
    querystring) took PostgreSQL two minutes to plan on the delivery log (its search joins
    the intake and the work item), SQLite answered a 500, for any viewer of the list."""
    one = _delivery(cb_intake)
    client.raise_request_exception = False
    client.force_login(cast.auditor_a)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(DELIVERIES, {"q": " ".join(["a"] * 2000)})
    assert response.status_code == 200
    assert "at most 10 words" in response.content.decode()
    assert response.context["cl"].result_count == 0
    assert max(q["sql"].upper().count("LIKE") for q in queries.captured_queries) < 50
    # A search of a few words is searched as before.
    response = client.get(DELIVERIES, {"q": f"{one.webhook_id[4:12]} {one.webhook_id[12:20]}"})
    assert [row.pk for row in response.context["cl"].result_list] == [one.pk]


def test_redeliver_goes_where_the_intakes_callbacks_go_now(client, cast, cb_intake, receiver):
    """The receiver moved and the admin changed the intake's URL; the receiver's owner asks
    for a resend of a delivery that went to the old one. It went to the old URL (a host the
    admin moved away from); it goes to the new one, same webhook-id, the move audited."""
    from intakes.services import intake_update

    receiver.expect_request("/moved").respond_with_data("ok")
    delivered = _delivered(cb_intake)
    old_url = delivered.url
    intake_update(intake=cb_intake, changes={"callback_url": receiver.url_for("/moved?k=n3w")})
    delivered.refresh_from_db()
    assert delivered.url == old_url  # delivered: not moved by the URL change
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "redeliver_now",
                                         "_selected_action": [str(delivered.pk)]}, follow=True)
    assert "1 delivery(ies) queued" in response.content.decode()
    assert callback_delivery_process(delivery_id=delivered.pk) == "delivered"
    delivered.refresh_from_db()
    assert delivered.url == receiver.url_for("/moved?k=n3w")
    assert delivered.endpoint == endpoint_key(delivered.url, cast.org_a.pk)
    [sent] = [request for request, _ in receiver.log]
    assert sent.path == "/moved" and sent.headers["webhook-id"] == delivered.webhook_id
    row = AuditEvent.objects.get(event="callback.redelivered")
    assert row.extra["url"] == [old_url.replace("token=s3", "token=REDACTED"),
                                receiver.url_for("/moved?k=REDACTED")]
    assert "s3" not in str(row.extra) and "n3w" not in str(row.extra)


def test_redeliver_keeps_a_callers_own_url_when_the_intakes_changed(client, cast, cb_intake,
                                                                    receiver):
    from intakes.services import intake_update

    own = receiver.url_for("/callers/own")
    mine = _delivery(cb_intake, state=State.FAILED, next_attempt_at=None,
                     uses_intake_default=False, url=own)
    intake_update(intake=cb_intake, changes={"callback_url": receiver.url_for("/moved")})
    client.force_login(cast.admin_a)
    client.post(DELIVERIES, {"action": "redeliver_now", "_selected_action": [str(mine.pk)]})
    mine.refresh_from_db()
    assert (mine.url, mine.state) == (own, State.PENDING)


def test_redeliver_with_the_intakes_url_removed_sends_nothing_and_says_why(client, cast,
                                                                          cb_intake):
    from intakes.services import intake_update

    gone = _gave_up(cb_intake)
    intake_update(intake=cb_intake, changes={"callback_url": ""})
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "redeliver_now",
                                         "_selected_action": [str(gone.pk)]}, follow=True)
    page = response.content.decode()
    assert "0 delivery(ies) queued" in page and "has no callback URL now" in page
    assert "in flight" not in page
    before = gone.url
    gone.refresh_from_db()
    assert (gone.state, gone.url) == (State.FAILED, before)
    assert not AuditEvent.objects.filter(event="callback.redelivered").exists()


def test_closing_circuits_for_a_select_all_reads_endpoints_not_every_delivery(cast,
                                                                              cb_intake):
    """"Select all" on a large organization, then "Close the endpoint's circuit": the action
    loaded every selected delivery (its URL, errors, everything) into Python to find a few
    endpoints. It reads the distinct endpoints of the selection."""
    from django.contrib import admin as django_admin
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    waiting = [_behind_open_circuit(cb_intake) for _ in range(3)]
    model_admin = django_admin.site._registry[CallbackDelivery]
    request = RequestFactory().post(DELIVERIES, {"select_across": "1"})
    request.user, request.session = cast.admin_a, {}
    request._messages = FallbackStorage(request)
    with CaptureQueriesContext(connection) as captured:
        model_admin.close_endpoint_circuit(request, model_admin.get_queryset(request))
    whole_rows = [q["sql"] for q in captured.captured_queries
                  if '"intakes_callbackdelivery"."last_error"' in q["sql"]]
    assert whole_rows == []
    assert CallbackEndpoint.objects.get(key=waiting[0].endpoint).open_until is None
    assert next(m.message for m in request._messages).startswith("Circuit closed for")


def test_redeliver_refuses_a_selection_larger_than_it_takes_at_once_and_changes_nothing(
        client, cast, cb_intake, monkeypatch):
    """"Select all" over a big delivery log, then "Redeliver now": every selected delivery
    was resent in the request, one transaction and audit row each, until gunicorn's timeout
    cut it halfway (and a second run resent the first ones again). Over the cap, nothing is
    resent and the page says how to narrow the list; at the cap, all go."""
    from intakes.admin_callbacks import CallbackDeliveryAdmin

    assert CallbackDeliveryAdmin.redeliver_now.at_once == 500
    monkeypatch.setattr(CallbackDeliveryAdmin.redeliver_now, "at_once", 2)
    rows = [_gave_up(cb_intake) for _ in range(3)]
    client.force_login(cast.admin_a)
    response = client.post(DELIVERIES, {"action": "redeliver_now", "select_across": "1",
                                         "_selected_action": [str(rows[0].pk)]}, follow=True)
    page = response.content.decode()
    assert "Nothing was done: 3 callback deliveries are selected" in page
    assert "takes at most 2 at once" in page
    assert set(CallbackDelivery.objects.values_list("state", flat=True)) == {State.FAILED}
    assert not AuditEvent.objects.filter(event="callback.redelivered").exists()
    response = client.post(DELIVERIES, {"action": "redeliver_now",
                                         "_selected_action": [str(r.pk) for r in rows[:2]]},
                           follow=True)
    assert "2 delivery(ies) queued" in response.content.decode()
    assert AuditEvent.objects.filter(event="callback.redelivered").count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_redelivered_delivery_deleted_right_after_the_commit_is_not_an_error(
        cast, cb_intake, monkeypatch):
    """Retention may delete an old delivery with its item the moment "Redeliver now"
    commits: the delivery is not read back after the commit (that was DoesNotExist, a
    500, for an action that was done)."""
    import intakes.callbacks

    mine = _gave_up(cb_intake)
    original = intakes.callbacks.audit_record

    def audit(*args, **kwargs):
        row = original(*args, **kwargs)
        transaction.on_commit(lambda: CallbackDelivery.objects.filter(pk=mine.pk).delete())
        return row

    monkeypatch.setattr(intakes.callbacks, "audit_record", audit)
    assert callback_delivery_redeliver(delivery=mine, actor=cast.admin_a) is True
    assert not CallbackDelivery.objects.filter(pk=mine.pk).exists()
    assert mine.state == State.PENDING  # as the redeliver left it, read before the commit
