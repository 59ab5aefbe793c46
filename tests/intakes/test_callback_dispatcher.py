"""The callback dispatcher: per-endpoint cap, circuit breaker, schedule, lost leases."""

import itertools
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.utils import timezone

from intakes import dispatcher as dispatcher_module
from intakes.callbacks import (
    callback_deliveries_claim,
    callback_delivery_create,
    callback_delivery_process,
    endpoint_key,
)
from intakes.dispatcher import Dispatcher
from intakes.models import CallbackAttempt, CallbackDelivery, CallbackEndpoint
from tests.callback_helpers import finished_item
from tests.processes import wait_for


class Endpoint:
    """A real threaded HTTP receiver: answers `status`, or holds every request until
    `release()` while `hang` is set. Counts requests in flight and the most at once."""

    def __init__(self, status: int = 200, hang: bool = False):
        self.status, self.hang = status, hang
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.ids: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with endpoint.lock:
                    endpoint.now += 1
                    endpoint.most = max(endpoint.most, endpoint.now)
                    endpoint.ids.append(self.headers["webhook-id"])
                try:
                    if endpoint.hang:
                        endpoint.gate.wait(60)
                    self.send_response(endpoint.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with endpoint.lock:
                        endpoint.now -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/hook"

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoints():
    made: list[Endpoint] = []

    def make(**kwargs) -> Endpoint:
        made.append(Endpoint(**kwargs))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def _deliveries(intake, url: str, count: int) -> list[CallbackDelivery]:
    return [callback_delivery_create(work_item=finished_item(intake, callback_url=url))
            for _ in range(count)]


def _settled(deliveries) -> bool:
    return CallbackDelivery.objects.filter(pk__in=[d.pk for d in deliveries],
                                           state="delivered").count() == len(deliveries)


def test_endpoint_key_is_scheme_host_and_port():
    assert endpoint_key("https://Hooks.Example.com/a?token=x") == "https://hooks.example.com:443"
    assert endpoint_key("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000"
    assert endpoint_key("https://[::1]:8443/") == "https://[::1]:8443"


@pytest.mark.parametrize("url", [
    "https://example.com/", "https://EXAMPLE.com/a", "https://example.com./b",
    "https://example.com:443/", "https://Example.COM.:443/x?y=1",
    "https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/"])  # fullwidth letters
def test_every_spelling_of_one_host_shares_its_cap_and_breaker(url):
    assert endpoint_key(url) == "https://example.com:443"


def test_a_non_ascii_host_is_keyed_by_the_name_the_connection_uses():
    assert endpoint_key("https://B\u00fccher.example./x") == "https://xn--bcher-kva.example:443"
    assert endpoint_key("https://[::1]/") == "https://[::1]:443"


# (senders, cap, most a hanging endpoint holds): with 4 senders a quarter is 1, below the
# cap, so 2 are kept for others and none is lent; with 8, 2 are kept and 4 lent.
@pytest.mark.parametrize("threads,per_host,most", [(4, 2, 2), (8, 2, 6)])
@pytest.mark.django_db(transaction=True)
def test_a_hanging_endpoint_holds_only_its_share_and_a_healthy_one_goes_through(
        cb_intake, endpoints, settings, threads, per_host, most):
    settings.AUXOT_CALLBACK_TIMEOUT_SECONDS = 60.0
    hanging, healthy = endpoints(hang=True), endpoints()
    stuck = _deliveries(cb_intake, hanging.url, 10)  # due first: ahead of the healthy ones
    dispatcher = Dispatcher(threads=threads, per_host=per_host).start()
    try:
        wait_for(lambda: hanging.now == most, timeout=30, what="the hanging endpoint's share")
        fine = _deliveries(cb_intake, healthy.url, 3)  # come due while the others hang
        wait_for(lambda: _settled(fine), timeout=30, what="the healthy endpoint's deliveries")
        assert hanging.most == most  # the cap (plus lent senders): the rest stayed free
        assert CallbackDelivery.objects.filter(pk__in=[d.pk for d in stuck],
                                               attempts=0).count() == 10 - most  # untried
        hanging.release()
        wait_for(lambda: _settled(stuck), timeout=30, what="the released endpoint's deliveries")
    finally:
        hanging.release()
        assert dispatcher.join(10)
    assert hanging.most <= most
    assert sorted(hanging.ids) == sorted(d.webhook_id for d in stuck)  # each once
    assert sorted(healthy.ids) == sorted(d.webhook_id for d in fine)


@pytest.mark.django_db
def test_the_breaker_opens_after_n_failures_and_untried_deliveries_keep_their_attempts(
        cb_intake, endpoints, settings):
    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 3
    settings.AUXOT_CALLBACK_BREAKER_SECONDS = 30.0
    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 600, 600]
    down = endpoints(status=500)
    key = endpoint_key(down.url, cb_intake.org_id, caller=True)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        deliveries = _deliveries(cb_intake, down.url, 6)
        one_at_a_time = Dispatcher(threads=1, per_host=1)
        for _ in range(3):  # three failures in a row open it
            one_at_a_time.run_once()
            assert one_at_a_time.send_queued() == 1
        endpoint = CallbackEndpoint.objects.get(key=key)
        assert endpoint.is_open and endpoint.failing_since == timezone.now()
        assert endpoint.consecutive_failures == 3

        # Open: nothing is claimed, the three untried deliveries keep attempt 0, and the
        # dispatcher sleeps until the pause ends.
        dispatcher = Dispatcher(threads=4, per_host=4)
        assert dispatcher.run_once() == pytest.approx(30.0)
        assert dispatcher.send_queued() == 0
        attempts = sorted(CallbackDelivery.objects.filter(
            pk__in=[d.pk for d in deliveries]).values_list("attempts", flat=True))
        assert attempts == [0, 0, 0, 1, 1, 1]

        # Half-open: one probe only, though the cap allows four; it fails: a longer pause.
        clock.shift(31)
        dispatcher.run_once()
        assert dispatcher.send_queued() == 1
        endpoint.refresh_from_db()
        assert endpoint.open_until == timezone.now() + timedelta(seconds=60)
        assert dispatcher.run_once() == pytest.approx(60.0)
        assert dispatcher.send_queued() == 0

        # The next probe succeeds: the breaker closes and the waiting deliveries go out.
        down.status = 200
        clock.shift(61)
        dispatcher.run_once()
        assert dispatcher.send_queued() == 1
        endpoint.refresh_from_db()
        assert not endpoint.is_open and endpoint.failing_since is None
        assert endpoint.consecutive_failures == 0
        dispatcher.run_once()
        assert dispatcher.send_queued() == 1  # the last untried one (the rest wait 600 s)
    firsts = CallbackAttempt.objects.filter(delivery__in=deliveries, number=1).count()
    assert firsts == 6  # every delivery's first attempt was numbered 1: none was burned


@pytest.mark.django_db
def test_one_organizations_failures_on_a_shared_host_pause_only_its_own_deliveries(
        cast, cb_intake, endpoints, settings):
    """Tenant A points its callbacks at a failing path of a host tenant B also uses: A's
    breaker opens; B's deliveries to that host still go out, and B's page says healthy."""
    from intakes.admin_callbacks import endpoint_health

    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 3
    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 600, 600]
    shared = endpoints(status=503)  # A's calls fail; the host is the same for B
    intake_b = _intake_of_org_b(cast)
    one_at_a_time = Dispatcher(threads=1, per_host=1)
    for _delivery in _deliveries(cb_intake, shared.url + "/bad", 3):
        one_at_a_time.run_once()
        assert one_at_a_time.send_queued() == 1
    key_a = endpoint_key(shared.url, cast.org_a.pk, caller=True)
    assert CallbackEndpoint.objects.get(key=key_a).is_open
    assert endpoint_health(key_a)  # A's own page says so

    shared.status = 204
    [b_delivery] = _deliveries(intake_b, shared.url + "/good", 1)
    assert b_delivery.endpoint == endpoint_key(shared.url, cast.org_b.pk, caller=True) != key_a
    dispatcher = Dispatcher(threads=4, per_host=4)
    dispatcher.run_once()
    assert dispatcher.send_queued() == 1
    b_delivery.refresh_from_db()
    assert b_delivery.state == "delivered"
    assert endpoint_health(b_delivery.endpoint) == ""
    assert shared.ids[-1] == b_delivery.webhook_id


def _intake_of_org_b(cast):
    from intakes.services import intake_create
    from tests.conftest import make_workflow

    return intake_create(
        org=cast.org_b, name="B's intake", created_by=cast.outsider_b,
        workflow=make_workflow(cast.org_b, [("transform", {"expression": "{echo: input}"})],
                               name="B echo"))


@pytest.mark.parametrize("threads", [4, 16])
@pytest.mark.django_db(transaction=True)
def test_one_organizations_many_hanging_receivers_leave_senders_to_the_others(
        cast, cb_intake, endpoints, settings, threads):
    """Tenant A calls back to as many hanging hosts as there are senders (each host under its
    own cap); tenant B's healthy receiver still gets its callback at once."""
    settings.AUXOT_CALLBACK_TIMEOUT_SECONDS = 60.0
    hanging = [endpoints(hang=True) for _ in range(threads)]
    for receiver in hanging:
        _deliveries(cb_intake, receiver.url, 1)
    dispatcher = Dispatcher(threads=threads, per_host=1)
    kept = dispatcher.org_reserve
    assert kept == max(1, threads // 8)
    dispatcher.start()
    try:
        wait_for(lambda: sum(r.now for r in hanging) == threads - kept, timeout=30,
                 what="tenant A's share of the senders")
        healthy = endpoints()
        fine = _deliveries(_intake_of_org_b(cast), healthy.url, kept)
        wait_for(lambda: _settled(fine), timeout=10, what="tenant B's callbacks")
        assert sum(r.most for r in hanging) == threads - kept  # A never held B's senders
    finally:
        for receiver in hanging:
            receiver.release()
        assert dispatcher.join(10)


@pytest.mark.django_db
def test_refusals_and_deliberate_answers_do_not_open_the_breaker(cb_intake, receiver, settings):
    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 1
    receiver.expect_request("/hook").respond_with_data("gone", status=410)
    item = finished_item(cb_intake, callback_url=receiver.url_for("/hook"))
    delivery = callback_delivery_create(work_item=item)
    assert callback_delivery_process(delivery_id=delivery.pk) == "failed"
    assert not CallbackEndpoint.objects.filter(open_until__isnull=False).exists()


@pytest.mark.parametrize(("status", "opens"), [
    (500, True), (502, True), (503, True), (408, True), (429, True), (None, True),
    (200, False), (204, False), (301, False), (400, False), (401, False), (403, False),
    (404, False), (405, False), (410, False), (413, False), (422, False),
])
def test_only_the_receivers_own_trouble_counts_against_its_endpoint(status, opens):
    """5xx, 408, 429 and no answer say the host is in trouble; any other answer is about
    the URL (a wrong path, a stale token in one URL) and must not pause the host for every
    other intake of the organization (an attacker review: one team's key, pointing
    Auxot-Callback-Url at a path of another team's receiver that answers 404, paused that
    team's callbacks)."""
    from intakes.callbacks import SendResult, _answered

    result = SendResult(status=status, error="" if status else "ConnectTimeout")
    assert _answered(result) is not opens


@pytest.mark.django_db
def test_a_wrong_path_on_a_shared_host_pauses_nobody(cast, cb_intake, endpoints, settings):
    """One team's URLs answer 404 on a host another intake of the organization calls back
    to: the breaker stays closed and the other intake's deliveries go out."""
    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 3
    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 600, 600]
    shared = endpoints(status=404)
    one_at_a_time = Dispatcher(threads=1, per_host=1)
    for _delivery in _deliveries(cb_intake, shared.url + "/nope", 5):
        one_at_a_time.run_once()
        assert one_at_a_time.send_queued() == 1
    key = endpoint_key(shared.url, cast.org_a.pk, caller=True)
    assert not CallbackEndpoint.objects.filter(key=key, open_until__isnull=False).exists()
    shared.status = 204
    [good] = _deliveries(cb_intake, shared.url + "/payments", 1)
    one_at_a_time.run_once()
    assert one_at_a_time.send_queued() == 1
    good.refresh_from_db()
    assert good.state == "delivered"


@pytest.mark.django_db
def test_a_delivery_due_later_is_claimed_when_it_comes_due_not_before(cb_intake, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        delivery = callback_delivery_create(work_item=finished_item(cb_intake))
        CallbackDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=timezone.now() + timedelta(seconds=42))
        dispatcher = Dispatcher(threads=2)
        assert dispatcher.run_once() == pytest.approx(42.0)  # sleeps until then, no tick
        assert dispatcher.send_queued() == 0
        clock.shift(41.5)
        assert dispatcher.run_once() == pytest.approx(0.5)
        clock.shift(0.5)
        dispatcher.run_once()
        assert dispatcher.send_queued() == 1
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 1


@pytest.mark.django_db
def test_a_look_is_one_read_of_the_deliveries_due_soonest(cb_intake):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with time_machine.travel(timezone.now(), tick=False):
        due = _deliveries(cb_intake, "http://127.0.0.1:9/hook", 3)
        [later] = _deliveries(cb_intake, "http://127.0.0.2:9/hook", 1)
        CallbackDelivery.objects.filter(pk=later.pk).update(
            next_attempt_at=timezone.now() + timedelta(seconds=7))
        dispatcher = Dispatcher(threads=8, per_host=4)
        with CaptureQueriesContext(connection) as queries:
            assert dispatcher.run_once() == pytest.approx(7.0)
    # The breakers, the due read, the claim's UPDATE and its SELECT.
    assert len(queries) == 4, [q["sql"][:80] for q in queries.captured_queries]
    assert dispatcher.in_flight == 3
    assert set(CallbackDelivery.objects.filter(state="delivering").values_list(
        "pk", flat=True)) == {d.pk for d in due}


@pytest.mark.django_db
def test_a_backlog_at_its_cap_does_not_hide_another_endpoints_due_delivery(cb_intake):
    crowded = _deliveries(cb_intake, "http://127.0.0.1:9/hook", 12)
    [other] = _deliveries(cb_intake, "http://127.0.0.2:9/hook", 1)
    CallbackDelivery.objects.filter(pk=other.pk).update(
        next_attempt_at=timezone.now() + timedelta(milliseconds=1))  # due after all of them
    # Two senders free, the crowded endpoint at its cap of 2 (and the other two kept in
    # reserve: nothing to lend): a read of the soonest few would hold only the crowded
    # endpoint's deliveries.
    dispatcher = Dispatcher(threads=4, per_host=2)
    assert dispatcher.reserve == 2
    dispatcher.run_once()
    assert dispatcher.in_flight == 2
    dispatcher.run_once(now=timezone.now() + timedelta(seconds=1))
    claimed = set(CallbackDelivery.objects.filter(state="delivering").values_list(
        "pk", flat=True))
    assert other.pk in claimed and len(claimed & {d.pk for d in crowded}) == 2


@pytest.mark.django_db
def test_a_retry_of_an_endpoint_at_its_cap_still_sets_when_to_look_next(cb_intake):
    with time_machine.travel(timezone.now(), tick=False):
        url = "http://127.0.0.1:9/hook"
        _first, retry = _deliveries(cb_intake, url, 2)
        CallbackDelivery.objects.filter(pk=retry.pk).update(
            next_attempt_at=timezone.now() + timedelta(seconds=3))
        dispatcher = Dispatcher(threads=8, per_host=1)
        assert dispatcher.run_once() == pytest.approx(3.0)
        assert dispatcher.in_flight == 1  # the endpoint is at its cap of 1
        # Senders are free to lend: the retry goes out when due, not at the next idle look.
        assert dispatcher.run_once() == pytest.approx(3.0)


@pytest.mark.django_db(transaction=True)
def test_the_dispatchers_threads_run_niced_and_the_rest_of_the_process_does_not(settings):
    import os

    settings.AUXOT_CALLBACK_NICE = 3
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    dispatcher = Dispatcher(threads=2, per_host=1, name="niced").start()
    try:
        def running() -> list | None:  # 2 senders, 4 database threads, the claim loop
            found = [t for t in threading.enumerate()
                     if t.name.startswith("niced-") and t.native_id is not None]
            return found if len(found) >= 7 else None

        threads = wait_for(running, timeout=10, what="the dispatcher's threads")
        # Linux: nice is per thread (each lowers itself as it starts).
        niced = wait_for(lambda: all(
            os.getpriority(os.PRIO_PROCESS, t.native_id) == min(19, base + 3) for t in threads),
            timeout=10, what="every dispatcher thread at +3")
        assert niced
    finally:
        assert dispatcher.join(10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


@pytest.mark.django_db(transaction=True)  # a dispatcher thread is in no transaction
def test_a_busy_database_thread_skips_the_health_check_until_idle_or_an_error(monkeypatch):
    from django.db import connections

    connection = connections["default"]  # the wrapper itself, not the context-local proxy
    from intakes import dispatcher

    checks = []
    monkeypatch.setattr(dispatcher, "close_old_connections", lambda: checks.append(1))
    monkeypatch.setattr(dispatcher._used, "at", 0.0, raising=False)
    dispatcher._fresh_connection()  # the first job of this thread: checked
    dispatcher._fresh_connection()  # busy: a check would be a SELECT 1 per job
    assert len(checks) == 1
    connection.errors_occurred = True
    try:
        dispatcher._fresh_connection()  # the last job failed: checked at once
    finally:
        connection.errors_occurred = False
    assert len(checks) == 2
    monkeypatch.setattr(dispatcher._used, "at", time.monotonic() - 2)
    dispatcher._fresh_connection()  # idle for over a second: checked
    assert len(checks) == 3


def test_the_claim_loop_looks_again_once_a_few_senders_are_free():
    dispatcher = Dispatcher(threads=64, per_host=4)
    assert dispatcher.gather == 8

    class Delivery:
        def __init__(self, pk):
            self.pk, self.endpoint = pk, "http://127.0.0.1:9"

    busy = [Delivery(pk) for pk in range(64)]
    for delivery in busy:
        dispatcher._in_flight[delivery.pk] = ("token", delivery.endpoint)
        dispatcher._per_endpoint[delivery.endpoint] += 1
    woken = []
    for delivery in busy[:9]:
        dispatcher._wake.clear()
        dispatcher._done(delivery, "token")
        woken.append(dispatcher._wake.is_set())
    assert woken == [False] * 7 + [True, True]  # from 8 free senders on, each one wakes it
    assert Dispatcher(threads=4, per_host=4).gather == 1


@pytest.mark.django_db(transaction=True)
def test_a_running_dispatcher_sends_a_retry_when_it_comes_due(cb_intake, endpoints):
    healthy = endpoints()
    [delivery] = _deliveries(cb_intake, healthy.url, 1)
    due = timezone.now() + timedelta(seconds=1.5)
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=due)
    dispatcher = Dispatcher(threads=2).start()
    try:
        attempt = wait_for(lambda: CallbackAttempt.objects.filter(delivery=delivery).first(),
                           timeout=30, what="the attempt")
    finally:
        assert dispatcher.join(10)
    assert attempt.started_at >= due
    assert healthy.ids == [delivery.webhook_id]


@pytest.mark.django_db(transaction=True)
def test_deliveries_coming_due_in_quick_succession_share_a_look(cb_intake, endpoints,
                                                                 monkeypatch):
    """A look costs the same for one delivery as for many: under load the loop looks at
    most every LOOK_SPACING and each look takes what came due since the last."""
    healthy = endpoints()
    deliveries = _deliveries(cb_intake, healthy.url, 30)
    start = timezone.now() + timedelta(seconds=0.5)
    for index, delivery in enumerate(deliveries):  # one due every 10 ms for 0.3 s
        CallbackDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=start + timedelta(seconds=index * 0.01))
    looks, claims = [], []
    run_once, hand_out = Dispatcher.run_once, Dispatcher._hand_out

    def look(self, now=None):
        looks.append(time.monotonic())
        return run_once(self, now)

    def claim(self, ids, now):
        if ids:
            claims.append(len(ids))
        return hand_out(self, ids, now)

    monkeypatch.setattr(Dispatcher, "run_once", look)
    monkeypatch.setattr(Dispatcher, "_hand_out", claim)
    # Senders to spare: a look's claim is bounded by the due deliveries, not by free senders.
    dispatcher = Dispatcher(threads=32, per_host=32).start()
    try:
        wait_for(lambda: _settled(deliveries), timeout=30, what="the deliveries")
    finally:
        assert dispatcher.join(10)
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)]
    # Stamped a few statements after the loop's own clock reading, so a look preempted
    # between the two (a loaded box) may seem a little early; a look per delivery would
    # be ~10 ms apart.
    assert min(gaps) >= dispatcher_module.LOOK_SPACING - 0.02
    # 30 due over 0.29 s: a look per 0.1 s claims them in 3 to 5 batches, not one by one.
    assert sum(claims) == 30 and len(claims) <= 6
    assert sorted(healthy.ids) == sorted(d.webhook_id for d in deliveries)  # each once


@pytest.mark.django_db
def test_a_lost_attempt_is_recovered_once(cb_intake, receiver, monkeypatch):
    receiver.expect_request("/hook").respond_with_data("ok")
    delivery = callback_delivery_create(work_item=finished_item(cb_intake))
    # A dispatcher died mid-attempt: its lease ran out, its attempt row is still open.
    CallbackDelivery.objects.filter(pk=delivery.pk).update(
        state="delivering", lease_token="dead", attempts=1,
        next_attempt_at=timezone.now() - timedelta(seconds=1))
    CallbackAttempt.objects.create(delivery=delivery, number=1, started_at=timezone.now(),
                                   url="x")
    one, two = Dispatcher(threads=2), Dispatcher(threads=2)
    one.run_once()
    two.run_once()
    assert one.in_flight + two.in_flight == 1  # claimed once, by one of them
    assert one.send_queued() + two.send_queued() == 1
    for _ in range(3):  # later looks find nothing to recover
        one.run_once()
        assert one.send_queued() == 0
    first, second = CallbackAttempt.objects.filter(delivery=delivery)
    assert first.error.startswith("interrupted") and second.status_code == 200
    assert len(receiver.log) == 1


@pytest.mark.django_db
def test_the_tick_enqueues_no_delivery_task_when_the_dispatcher_sends(
        cb_intake, receiver, monkeypatch):
    from intakes import callbacks, receivers

    enqueued = []
    monkeypatch.setattr(callbacks, "callback_delivery_enqueue",
                        lambda delivery_id: enqueued.append(delivery_id))
    callback_delivery_create(work_item=finished_item(cb_intake))
    receivers._on_tick(sender=None, now=timezone.now())
    assert enqueued == []


@pytest.mark.django_db
def test_a_batch_of_finished_items_gets_its_deliveries_in_a_few_queries(
        cb_intake, receiver, django_assert_max_num_queries):
    from workflows.batch import _announce_all
    from workflows.models import WorkItem
    from workflows.services import work_item_create

    items = [work_item_create(workflow=cb_intake.workflow, intake=cb_intake, input={"n": n})
             for n in range(10)]
    WorkItem.objects.filter(pk__in=[i.pk for i in items]).update(
        status="completed", finished_at=timezone.now())
    finished = list(WorkItem.objects.filter(pk__in=[i.pk for i in items]))
    # The intakes, those calling back again FOR SHARE, one INSERT, the NOTIFY (+ savepoint).
    with django_assert_max_num_queries(6):
        _announce_all(finished)
    deliveries = CallbackDelivery.objects.filter(work_item__in=items)
    assert deliveries.count() == 10 and {d.state for d in deliveries} == {"pending"}
    _announce_all(finished)  # again: nothing new, nothing changed
    assert CallbackDelivery.objects.filter(work_item__in=items).count() == 10


def _claimed_mix(cb_intake, url: str, count: int) -> list:
    """`count` (2 or more) claimed deliveries: a retry with an open attempt row, a failed
    item with two replays, the rest plain first attempts."""
    from workflows.models import WorkItem

    deliveries = _deliveries(cb_intake, url, count)
    retry = deliveries[0]
    CallbackDelivery.objects.filter(pk=retry.pk).update(attempts=1)
    CallbackAttempt.objects.create(delivery=retry, number=1, started_at=timezone.now(), url="x")
    failed = deliveries[1].work_item
    WorkItem.objects.filter(pk=failed.pk).update(
        status="failed", output=None, error={"code": "boom", "message": "no"})
    for minutes in (2, 1):
        replay = finished_item(cb_intake)
        WorkItem.objects.filter(pk=replay.pk).update(
            replay_of=failed, created_at=timezone.now() - timedelta(minutes=minutes))
    claimed = callback_deliveries_claim(ids=[d.pk for d in deliveries], now=timezone.now())
    order = [d.pk for d in deliveries]
    return sorted(claimed, key=lambda pair: order.index(pair[0].pk))


@pytest.mark.django_db(transaction=True)
def test_a_claimed_batch_is_prepared_in_one_commit_and_the_same_queries_whatever_its_size(
        cb_intake, endpoints):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from intakes.callbacks import callback_attempts_prepare
    from intakes.presenters import render_json, work_item_poll_view

    healthy = endpoints()
    counts = []
    for size in (2, 8):
        claimed = _claimed_mix(cb_intake, healthy.url, size)
        assert len(claimed) == size
        now = timezone.now()
        with CaptureQueriesContext(connection) as queries:
            prepared = callback_attempts_prepare(claimed=claimed, now=now)
        statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
        assert statements.count("COMMIT") <= 1  # one transaction writes every row
        counts.append(len(statements))
        assert [p.delivery.pk for p in prepared] == [d.pk for d, _token in claimed]
        for attempt in prepared:  # committed before any POST; the body is the poll's
            delivery = attempt.delivery
            row = CallbackAttempt.objects.get(pk=attempt.attempt.pk)
            assert row.number == delivery.attempts and row.finished_at is None
            assert attempt.body == render_json(work_item_poll_view(
                delivery.work_item, intake=delivery.intake, delivery=delivery).body)
        [first, *_] = CallbackAttempt.objects.filter(delivery=claimed[0][0])
        assert first.error.startswith("interrupted")  # the retry's open row was marked
        body = json.loads(prepared[1].body)
        assert body["status"] == "failed" and len(body["replayed_by"]) == 2
    # The leases checked (and renewed), marked, inserted (in one transaction), the steps and
    # attempts, the replays.
    assert counts[0] == counts[1] <= 7


@pytest.mark.django_db
def test_a_body_that_cannot_be_made_holds_back_none_of_its_batch(cb_intake, endpoints,
                                                                monkeypatch):
    from intakes import callbacks

    healthy = endpoints()
    deliveries = _deliveries(cb_intake, healthy.url, 4)
    broken = deliveries[2].work_item_id
    view = callbacks.work_item_poll_view

    def poll_view(item, **kwargs):
        if item.pk == broken:
            raise RuntimeError("cannot render")
        return view(item, **kwargs)

    monkeypatch.setattr(callbacks, "work_item_poll_view", poll_view)
    dispatcher = Dispatcher(threads=8, per_host=8)
    dispatcher.run_once()
    assert dispatcher.send_queued() == 3
    assert dispatcher.in_flight == 0
    assert sorted(healthy.ids) == sorted(d.webhook_id for d in deliveries
                                         if d.work_item_id != broken)
    # Its row is written and open, its lease lapses: the next attempt marks it interrupted.
    stuck = CallbackDelivery.objects.get(work_item_id=broken)
    assert stuck.state == "delivering" and stuck.attempts == 1
    assert CallbackAttempt.objects.get(delivery=stuck).finished_at is None


@pytest.mark.django_db
def test_the_progress_of_many_items_is_each_items_own(cb_intake, cast):
    from tests.conftest import make_workflow
    from workflows.lookup import step_progress, step_progress_many
    from workflows.services import work_item_create

    items = [finished_item(cb_intake) for _ in range(3)]
    other = make_workflow(cast.org_a, [("transform", {"expression": "input"}),
                                       ("delay", {"seconds": 1})], name="Two")
    items.append(work_item_create(workflow=other, input={"n": 2}))  # never ran: no attempts
    progress = step_progress_many(items)
    assert set(progress) == {item.pk for item in items}
    for item in items:
        steps, runs = progress[item.pk]
        one_steps, one_runs = step_progress(item)
        assert [s.pk for s in steps] == [s.pk for s in one_steps]
        assert [(r.pk, r.status, r.attempt) for r in runs] == [
            (r.pk, r.status, r.attempt) for r in one_runs]
    assert [len(progress[i.pk][0]) for i in items] == [1, 1, 1, 2]
    assert [len(progress[i.pk][1]) for i in items] == [1, 1, 1, 0]
    assert step_progress_many([]) == {}


def _prepared_batch(cb_intake, url: str, count: int) -> list:
    from intakes.callbacks import callback_attempts_prepare

    claimed = callback_deliveries_claim(ids=[d.pk for d in _deliveries(cb_intake, url, count)],
                                        now=timezone.now())
    return callback_attempts_prepare(claimed=claimed, now=timezone.now())


@pytest.mark.django_db
def test_a_batch_of_outcomes_costs_the_same_statements_whatever_its_size(cb_intake):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from intakes.callbacks import SendResult, callback_attempts_finish

    url = "http://127.0.0.1:9/hook"
    # its first failure creates it
    CallbackEndpoint.objects.create(key=endpoint_key(url, cb_intake.org_id, caller=True))
    counts = []
    for size in (2, 17):  # both end with a failure after an answer
        prepared = _prepared_batch(cb_intake, url, size)
        # Answers of every kind: delivered, retried (the breaker counts it), failed for good.
        answers = [SendResult(status=204, latency_ms=3), SendResult(status=500, latency_ms=4),
                   SendResult(error="refused: no", refused=True)]
        outcomes = [(p, answers[index % 3]) for index, p in enumerate(prepared)]
        with CaptureQueriesContext(connection) as queries:
            states = callback_attempts_finish(outcomes=outcomes)
        assert states == [["delivered", "pending", "failed"][i % 3] for i in range(size)]
        counts.append(len(queries))
        rows = {r.delivery_id: r for r in CallbackAttempt.objects.filter(
            delivery__in=[p.delivery for p in prepared])}
        for index, p in enumerate(prepared):
            row = rows[p.delivery.pk]
            assert row.finished_at is not None
            assert (row.status_code, row.latency_ms) == [(204, 3), (500, 4), (None, None)][
                index % 3]
            assert row.error == ["", "", "refused: no"][index % 3]
        retried = CallbackDelivery.objects.filter(pk__in=[p.delivery.pk for p in prepared],
                                                  state="pending")
        assert all(d.next_attempt_at is not None and d.lease_token == "" and d.last_status == 500
                   for d in retried)
    # The deliveries, the attempt rows, the breaker's reset and its failure (read, write),
    # inside one transaction: the same for 2 outcomes as for 17.
    assert counts[0] == counts[1] <= 9, counts


@pytest.mark.django_db
def test_a_batch_of_2xx_is_on_disk_in_one_statement_on_postgresql(cb_intake):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from intakes.callbacks import SendResult, callback_attempts_finish

    url = "http://127.0.0.1:9/hook"
    CallbackEndpoint.objects.create(key=endpoint_key(url, cb_intake.org_id, caller=True),
                                    consecutive_failures=3,
                                    failing_since=timezone.now(), last_error="HTTP 500")
    prepared = _prepared_batch(cb_intake, url, 5)
    with CaptureQueriesContext(connection) as queries:
        states = callback_attempts_finish(outcomes=[
            (p, SendResult(status=200 + i, latency_ms=i, body=f"ok {i}"))
            for i, p in enumerate(prepared)])
    assert states == ["delivered"] * 5
    if connection.vendor == "postgresql":  # attempts, deliveries and breaker: one commit
        assert len(queries) == 1, [q["sql"][:80] for q in queries.captured_queries]
    for i, p in enumerate(prepared):
        delivery = CallbackDelivery.objects.get(pk=p.delivery.pk)
        assert (delivery.state, delivery.lease_token, delivery.last_status,
                delivery.next_attempt_at) == ("delivered", "", 200 + i, None)
        attempt = CallbackAttempt.objects.get(pk=p.attempt.pk)
        assert (attempt.status_code, attempt.latency_ms, attempt.response_body,
                attempt.error) == (200 + i, i, f"ok {i}", "")
        assert attempt.finished_at == delivery.delivered_at
    endpoint = CallbackEndpoint.objects.get(key=endpoint_key(url, cb_intake.org_id, caller=True))
    assert (endpoint.consecutive_failures, endpoint.failing_since) == (0, None)
    assert endpoint.last_success_at is not None


@pytest.mark.django_db
def test_an_outcome_whose_lease_was_taken_over_changes_nothing_of_its_delivery(cb_intake):
    from intakes.callbacks import SendResult, callback_attempts_finish

    prepared = _prepared_batch(cb_intake, "http://127.0.0.1:9/hook", 2)
    CallbackDelivery.objects.filter(pk=prepared[0].delivery.pk).update(lease_token="another")
    states = callback_attempts_finish(outcomes=[(p, SendResult(status=204)) for p in prepared])
    assert states == ["delivered", "delivered"]
    taken, mine = (CallbackDelivery.objects.get(pk=p.delivery.pk) for p in prepared)
    assert (taken.state, taken.lease_token, taken.delivered_at) == ("delivering", "another", None)
    assert (mine.state, mine.lease_token) == ("delivered", "")
    assert mine.delivered_at is not None


@pytest.mark.django_db
def test_the_breaker_sees_a_batchs_outcomes_in_order(cb_intake, settings):
    from intakes.callbacks import SendResult, callback_attempts_finish

    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 5
    url = "http://127.0.0.1:9/hook"
    fail, ok = SendResult(status=500), SendResult(status=204)
    one = _prepared_batch(cb_intake, url, 4)
    callback_attempts_finish(outcomes=list(zip(one, [ok, fail, ok, fail], strict=True)))
    endpoint = CallbackEndpoint.objects.get(key=endpoint_key(url, cb_intake.org_id, caller=True))
    assert endpoint.consecutive_failures == 1  # the last failure, after the last success
    two = _prepared_batch(cb_intake, url, 3)
    callback_attempts_finish(outcomes=list(zip(two, [fail, ok, ok], strict=True)))
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0 and endpoint.failing_since is None


@pytest.mark.django_db
def test_an_unreadable_retry_after_leaves_the_outcome_recorded_on_schedule(cb_intake, settings):
    """A receiver's header never makes its own answer unrecordable ('²' is a digit to
    str.isdigit(), and float() refuses it)."""
    from intakes.callbacks import SendResult, callback_attempts_finish

    settings.AUXOT_CALLBACK_RETRY_SCHEDULE = [0, 7]
    settings.AUXOT_CALLBACK_JITTER = 0
    url = "http://127.0.0.1:9/hook"
    prepared = _prepared_batch(cb_intake, url, 3)
    answers = [SendResult(status=503, headers={"retry-after": value}) for value in (
        "\u00b2", "9" * 400, "99999999999999")]
    before = timezone.now()
    states = callback_attempts_finish(outcomes=list(zip(prepared, answers, strict=True)))
    assert states == ["pending"] * 3
    for p in prepared:
        delivery = CallbackDelivery.objects.get(pk=p.delivery.pk)
        assert delivery.lease_token == "" and delivery.last_status == 503
        wait = (delivery.next_attempt_at - before).total_seconds()
        assert 6.5 < wait < 60, wait  # the schedule's 7 s: the header ignored
        assert CallbackAttempt.objects.get(pk=p.attempt.pk).finished_at is not None
    endpoint = CallbackEndpoint.objects.get(key=endpoint_key(url, cb_intake.org_id, caller=True))
    assert endpoint.consecutive_failures == 3


@pytest.mark.django_db
def test_only_an_answer_saying_abort_message_counts_as_deliberate(cb_intake, settings):
    """An error whose text quotes the receiver (a malformed status line saying
    'abort-message') is a failure for the breaker; the header on an answer is not."""
    from intakes.callbacks import SendResult, callback_attempts_finish

    settings.AUXOT_CALLBACK_BREAKER_FAILURES = 10
    url = "http://127.0.0.1:9/hook"
    quoted = SendResult(error="connection failed: ProtocolError: ('Connection aborted.', "
                              "BadStatusLine('HTTP/1.1 abort-message\\r\\n'))")
    states = callback_attempts_finish(outcomes=[(p, quoted) for p in _prepared_batch(
        cb_intake, url, 2)])
    assert states == ["pending", "pending"]  # retried: it did not ask to stop
    endpoint = CallbackEndpoint.objects.get(key=endpoint_key(url, cb_intake.org_id, caller=True))
    assert endpoint.consecutive_failures == 2
    asked = SendResult(status=400, headers={"webhook-delivery": "abort-message"})
    [prepared] = _prepared_batch(cb_intake, url, 1)
    assert callback_attempts_finish(outcomes=[(prepared, asked)]) == ["failed"]
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0  # a deliberate answer: the endpoint is up


@pytest.mark.django_db
def test_a_batch_of_outcomes_that_fails_is_recorded_one_at_a_time(cb_intake, endpoints,
                                                                 monkeypatch, caplog):
    from intakes import callbacks

    def broken(*args, **kwargs):
        raise RuntimeError("the batch's UPDATE failed")

    monkeypatch.setattr(callbacks.rawsql, "update_rows", broken)
    monkeypatch.setattr(callbacks, "_delivered_all", broken)
    healthy = endpoints()
    deliveries = _deliveries(cb_intake, healthy.url, 3)
    dispatcher = Dispatcher(threads=4, per_host=4)
    dispatcher.run_once()
    assert dispatcher.send_queued() == 3
    assert dispatcher.in_flight == 0
    assert _settled(deliveries)
    assert CallbackAttempt.objects.filter(delivery__in=deliveries, status_code=200).count() == 3
    assert "one at a time" in caplog.text


@pytest.mark.django_db
def test_a_large_claim_is_prepared_in_several_jobs(cb_intake, endpoints):
    from intakes.dispatcher import PREPARE_BATCH

    healthy = endpoints()
    deliveries = _deliveries(cb_intake, healthy.url, PREPARE_BATCH + 4)
    dispatcher = Dispatcher(threads=64, per_host=64)
    dispatcher.run_once()
    jobs = list(dispatcher._db_jobs._prepares)
    assert [len(job[1]) for job in jobs] == [PREPARE_BATCH, 4]  # the database threads share it
    assert dispatcher.send_queued() == len(deliveries)
    assert _settled(deliveries)


@pytest.mark.django_db
def test_a_batch_whose_rows_are_written_is_not_prepared_again(cb_intake, endpoints,
                                                             monkeypatch):
    from intakes import callbacks

    def broken(items):
        raise RuntimeError("the progress read failed")

    monkeypatch.setattr(callbacks, "step_progress_many", broken)
    healthy = endpoints()
    deliveries = _deliveries(cb_intake, healthy.url, 3)
    dispatcher = Dispatcher(threads=4, per_host=4)
    dispatcher.run_once()
    assert dispatcher.send_queued() == 0
    assert dispatcher.in_flight == 0 and healthy.ids == []
    # One open row each (no second try under the same number): their leases lapse.
    rows = CallbackAttempt.objects.filter(delivery__in=deliveries)
    assert sorted(r.number for r in rows) == [1, 1, 1]
    assert all(r.finished_at is None for r in rows)


@pytest.mark.django_db
def test_a_410_in_a_batch_disables_the_intakes_callback(cb_intake):
    from intakes.callbacks import SendResult, callback_attempts_finish, callback_attempts_prepare

    claimed = callback_deliveries_claim(
        ids=[callback_delivery_create(work_item=finished_item(cb_intake)).pk,
             callback_delivery_create(work_item=finished_item(
                 cb_intake, callback_url="http://127.0.0.1:9/own")).pk],
        now=timezone.now())
    prepared = callback_attempts_prepare(claimed=claimed, now=timezone.now())
    states = callback_attempts_finish(outcomes=[(p, SendResult(status=410)) for p in prepared])
    by_default = {p.delivery.uses_intake_default: s for p, s in zip(prepared, states,
                                                                      strict=True)}
    assert by_default == {True: "disabled", False: "failed"}  # an override stops only itself
    cb_intake.refresh_from_db()
    assert cb_intake.callback_disabled


class _Waits:
    """Counts Condition.wait calls that return, per thread, while patched in."""

    def __init__(self, monkeypatch, names: list[str]):
        self.names = set(names)
        self.lock = threading.Lock()
        self.entered: dict[str, int] = {}
        self.returned: dict[str, int] = {}
        original = threading.Condition.wait
        waits = self

        def wait(condition, timeout=None):
            name = threading.current_thread().name
            if name not in waits.names:  # other threads of the test process
                return original(condition, timeout)
            with waits.lock:
                waits.entered[name] = waits.entered.get(name, 0) + 1
            try:
                return original(condition, timeout)
            finally:
                with waits.lock:
                    waits.returned[name] = waits.returned.get(name, 0) + 1

        monkeypatch.setattr(threading.Condition, "wait", wait)

    def total(self) -> int:
        with self.lock:
            return sum(self.returned.values())

    def waiting(self) -> set[str]:
        with self.lock:
            return {n for n, count in self.entered.items() if count > self.returned.get(n, 0)}


def test_a_database_job_wakes_one_thread_not_all(monkeypatch):
    """Each wake-up is a context switch, and on a busy host a woken thread may take the CPU
    from the one holding the GIL: an outcome wakes the outcome thread only, a preparation
    one preparing thread; outcomes that come while the outcome thread is busy wait for it
    (one batch), unless there are more than it takes at once."""
    names = ["jobs-outcomes", "jobs-db-1", "jobs-db-2", "jobs-db-3"]
    waits = _Waits(monkeypatch, names)
    jobs = dispatcher_module.DatabaseJobs()
    taken: dict[str, list] = {name: [] for name in names}  # each thread appends to its own
    busy = threading.Lock()  # held: the outcome thread is "recording" (not a Condition wait)

    def loop(name: str, outcomes_only: bool) -> None:
        while (job := jobs.take(outcomes_only=outcomes_only)) is not None:
            taken[name].append(job)
            if outcomes_only:
                with busy:
                    pass

    threads = [threading.Thread(target=loop, args=(name, name == "jobs-outcomes"), name=name,
                                daemon=True) for name in names]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: waits.waiting() == set(names), timeout=5)
        jobs.put_outcome("first")
        wait_for(lambda: taken["jobs-outcomes"], timeout=5)
        time.sleep(0.2)  # a woken thread with nothing to take would have waited again by now
        assert waits.total() == 1
        assert {name: got for name, got in taken.items() if got} == {
            "jobs-outcomes": [("finish", ["first"])]}

        jobs.put(("prepare", "batch"))
        wait_for(lambda: sum(bool(got) for got in taken.values()) == 2, timeout=5)
        time.sleep(0.2)
        assert waits.total() == 2
        [preparer] = {name for name, got in taken.items() if got} - {"jobs-outcomes"}
        assert taken[preparer] == [("prepare", "batch")]

        # The outcome thread is busy: a few outcomes wait for it and go in one batch.
        wait_for(lambda: waits.waiting() == set(names), timeout=5)
        busy.acquire()
        jobs.put_outcome("second")
        wait_for(lambda: len(taken["jobs-outcomes"]) == 2, timeout=5)  # took it, now "recording"
        for index in range(5):
            jobs.put_outcome(f"queued-{index}")
        time.sleep(0.2)
        woken = waits.total()
        assert woken == 3  # none for the five: the outcome thread takes them when it is done
        busy.release()
        wait_for(lambda: len(taken["jobs-outcomes"]) == 3, timeout=5)
        assert taken["jobs-outcomes"][2] == ("finish", [f"queued-{i}" for i in range(5)])

        # More than one batch while it is busy: one preparing thread is woken to help.
        wait_for(lambda: waits.waiting() == set(names), timeout=5)
        busy.acquire()
        jobs.put_outcome("third")
        wait_for(lambda: len(taken["jobs-outcomes"]) == 4, timeout=5)
        batch = dispatcher_module.OUTCOME_BATCH
        for index in range(batch + 1):
            jobs.put_outcome(index)
        wait_for(lambda: sum(len(job[1]) for name, got in taken.items() if name != "jobs-outcomes"
                             for job in got if job[0] == "finish") == batch + 1, timeout=5)
        helped = [job for name, got in taken.items() if name != "jobs-outcomes" for job in got
                  if job[0] == "finish"]
        assert helped[0] == ("finish", list(range(batch)))  # a batch at once, in order
        assert [item for job in helped for item in job[1]] == list(range(batch + 1))
        assert len(taken["jobs-outcomes"]) == 4  # still busy: it took none of them
        assert waits.total() == 5  # the outcome thread for "third", one helper
        busy.release()
    finally:
        if busy.locked():
            busy.release()
        jobs.close()
        for thread in threads:
            thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
