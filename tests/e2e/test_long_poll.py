"""GET .../work/{work_id}?wait=N: answers when the item finishes, or after N s, without
holding a database connection, and 50 waiting callers do not block a trigger."""

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.utils import timezone

from apikeys.models import ApiKey
from auxot.models import Organization
from intakes import longpoll
from tests.conftest import bearer, trigger
from tests.processes import ROOT, process_env, wait_for
from workflows.models import WorkItem


def _poll(api, intake, token, work_id, wait):
    return api.get(f"/v1/intake/{intake.pk}/work/{work_id}", {"wait": wait}, **bearer(token))


def _complete_later(work_id, seconds: float) -> threading.Timer:
    def complete():
        WorkItem.objects.filter(pk=work_id).update(
            status="completed", output={"done": True}, finished_at=timezone.now(),
            next_run_at=None)
        connection.close()

    timer = threading.Timer(seconds, complete)
    timer.start()
    return timer


@pytest.mark.parametrize("raw", [
    "0", "-1", "abc", "31", "1e3", "", "0.0", "nan", "5s", "inf", "1e9", "1e-400",
    # What float() takes but a number in a query string is not: Python's digit separator,
    # surrounding whitespace, a sign, other scripts' digits (fullwidth, Arabic-Indic).
    "0_1", " 5", "5 ", "5\n", "+5", "\uff15", "\u0665",
    # Given twice: neither value is quietly the one that counts.
    ["20", "0"], ["0", "5"], ["5", "5"],
], ids=repr)
def test_invalid_wait_is_400_problem(api, intake_a, member_token, raw):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = _poll(api, intake_a, member_token, work_id, raw)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_request"
    assert "at most 30" in response.json()["detail"]


@pytest.mark.parametrize("raw", ["30", "0.5", "20.0", ".5", "5.", "1e1", "1E1", "1e-05", "007"])
def test_every_plain_number_form_is_a_wait(api, intake_a, member_token, raw):
    """Integers, decimals and exponents (the Python client sends f"{wait:g}": 1e-05)."""
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    WorkItem.objects.filter(pk=work_id).update(status="completed", finished_at=timezone.now())
    response = _poll(api, intake_a, member_token, work_id, raw)  # finished: answers at once
    assert (response.status_code, response.json()["status"]) == (200, "completed")


def test_poll_advertises_the_long_poll_cap(api, intake_a, member_token, settings):
    settings.AUXOT_LONG_POLL_MAX_SECONDS = 12
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}", **bearer(member_token))
    assert response["Auxot-Wait-Max"] == "12"
    assert _poll(api, intake_a, member_token, work_id, "12.5").status_code == 400


def test_wait_on_unknown_item_is_404_at_once(api, intake_a, member_token):
    started = time.monotonic()
    response = _poll(api, intake_a, member_token, "00000000-0000-0000-0000-000000000000", "20")
    assert response.status_code == 404
    assert time.monotonic() - started < 5


@pytest.mark.django_db(transaction=True)
def test_wait_answers_as_soon_as_the_item_finishes(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    timer = _complete_later(work_id, 0.5)
    started = time.monotonic()
    response = _poll(api, intake_a, member_token, work_id, "20")
    elapsed = time.monotonic() - started
    timer.join()
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["output"] == {"done": True}
    assert "Retry-After" not in response
    assert 0.4 < elapsed < 10  # woke on completion, long before the 20 s


def _poll_state(api, intake, token, work_id, wait, state):
    return api.get(f"/v1/intake/{intake.pk}/work/{work_id}", {"wait": wait, "state": state},
                   **bearer(token))


@pytest.mark.django_db(transaction=True)
def test_a_wait_given_the_state_it_saw_answers_as_soon_as_it_changes(api, intake_a,
                                                                     member_token):
    """A long-poll answered only when the item finished: a caller saw `running` or the next
    step up to 30 s late, or polled every few seconds to see it. Given the `Auxot-State` it
    last read, it answers the change within the watcher's recheck."""
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    first = api.get(f"/v1/intake/{intake_a.pk}/work/{work_id}", **bearer(member_token))
    seen = first["Auxot-State"]
    assert seen.startswith("pending.0.-.")

    def run():
        WorkItem.objects.filter(pk=work_id).update(
            status="running", current_step=1, waiting_on="delay",
            next_run_at=timezone.now() + timedelta(hours=1))
        connection.close()

    timer = threading.Timer(0.5, run)
    timer.start()
    started = time.monotonic()
    response = _poll_state(api, intake_a, member_token, work_id, "20", seen)
    elapsed = time.monotonic() - started
    timer.join()
    assert response.status_code == 200 and "Auxot-Wait-Refused" not in response
    assert response.json()["status"] == "running"
    assert response["Auxot-State"] == "running.1.delay.wait.0.-"
    assert 0.4 < elapsed < 5
    # Already another than the caller's: at once, without waiting (a three-part token of an
    # earlier server too: the caller carries on with the new one).
    for old in (seen, "running.1.delay"):
        started = time.monotonic()
        response = _poll_state(api, intake_a, member_token, work_id, "20", old)
        assert time.monotonic() - started < 2
        assert response["Auxot-State"] == "running.1.delay.wait.0.-"
    # The same state: it waits (here its whole 1 s; without `state`, a change never ends it).
    started = time.monotonic()
    response = _poll_state(api, intake_a, member_token, work_id, "1", "running.1.delay.wait.0.-")
    assert time.monotonic() - started >= 0.9
    assert response["Auxot-State"] == "running.1.delay.wait.0.-"


@pytest.mark.parametrize("raw", ["", "running", "running.1", "RUNNING.1.-", "running.x.-",
                                 "running.1.delay.x", "running.1.delay.wait.1",
                                 "running.1.-.wait.1.P10", "running.1.-.wait.x.-",
                                 "running.1.-.wait.1.-.x",
                                 ["running.1.-", "running.1.-"]], ids=repr)
def test_a_malformed_state_is_400(api, intake_a, member_token, raw):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    response = _poll_state(api, intake_a, member_token, work_id, "5", raw)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert "Auxot-State" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_a_wait_without_state_still_answers_only_at_the_end(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    timer = threading.Timer(0.2, lambda: (WorkItem.objects.filter(pk=work_id).update(
        status="running"), connection.close()))
    timer.start()
    started = time.monotonic()
    response = _poll(api, intake_a, member_token, work_id, "1.5")
    timer.join()
    assert time.monotonic() - started >= 1.4 and response.json()["status"] == "running"


@pytest.mark.django_db(transaction=True)
def test_wait_times_out_with_the_current_state(api, intake_a, member_token):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    started = time.monotonic()
    response = _poll(api, intake_a, member_token, work_id, "1.5")
    assert time.monotonic() - started >= 1.4
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert response["Retry-After"] == "1"


@pytest.mark.django_db(transaction=True)
def test_waiting_request_holds_no_database_connection(api, intake_a, member_token,
                                                      monkeypatch):
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    held = []
    real_wait = longpoll._watcher.wait

    def spy(item_id, seconds, owner=None, org=None, state=None):
        held.append((connection.connection is not None, owner, org))
        return real_wait(item_id, seconds, owner, org, state)

    monkeypatch.setattr(longpoll._watcher, "wait", spy)
    assert _poll(api, intake_a, member_token, work_id, "0.3").status_code == 200
    from apikeys.models import ApiKey

    # No connection held while waiting; the slot is counted against the polling key and
    # its organization.
    key = ApiKey.objects.get(last_four=member_token[-4:])
    assert held == [(False, key.pk, key.org_id)]


def _revoke(key, cast):
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())


def _expire(key, cast):
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now())


def _deactivate_owner(key, cast):
    type(cast.member_a).objects.filter(pk=cast.member_a.pk).update(is_active=False)


def _downgrade(key, cast):
    Organization.objects.filter(pk=cast.org_a.pk).update(plan="pro")


@pytest.mark.parametrize(("team_key", "change"), [
    (False, _revoke), (False, _expire), (False, _deactivate_owner), (True, _downgrade),
    (True, _revoke),
], ids=["revoked", "expired", "owner-deactivated", "team-plan-downgraded", "team-revoked"])
def test_a_key_refused_while_it_waited_gets_401_not_the_item(api, cast, workflow_a,
                                                             monkeypatch, team_key, change):
    """Revoking a leaked key stops it on its next request, and also on one that was already
    long-polling: after the wait the key is checked again, as the intake access is (an item
    that finished meanwhile was exactly what the holder waited for)."""
    from apikeys.services import apikey_issue
    from intakes.services import intake_create

    intake = intake_create(org=cast.org_a, workflow=workflow_a, name="I",
                           team=cast.team_a if team_key else None)
    issued = (apikey_issue(org=cast.org_a, label="t", team=cast.team_a) if team_key
              else apikey_issue(org=cast.org_a, label="m", user=cast.member_a))
    work_id = trigger(api, intake.pk, issued.token).json()["work_id"]

    def wait_then_refuse(item_id, seconds, owner=None, org=None, state=None):
        change(issued.key, cast)
        WorkItem.objects.filter(pk=item_id).update(status="completed", output={"secret": 1},
                                                   finished_at=timezone.now())
        return True

    monkeypatch.setattr(longpoll._watcher, "wait", wait_then_refuse)
    response = _poll(api, intake, issued.token, work_id, "20")
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "secret" not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_over_the_waiter_limit_answers_at_once(api, intake_a, member_token, settings):
    settings.AUXOT_LONG_POLL_MAX_WAITERS = 0
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    started = time.monotonic()
    response = _poll(api, intake_a, member_token, work_id, "20")
    assert time.monotonic() - started < 5
    assert response.json()["status"] == "pending"


@pytest.mark.django_db(transaction=True)
def test_one_key_takes_at_most_its_share_of_the_waiting_slots(intake_a, member_token, api,
                                                              settings):
    """4 slots, 2 per key: a caller long-polling many items leaves the others slots."""
    settings.AUXOT_LONG_POLL_MAX_WAITERS, settings.AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY = 4, 2
    ids = [trigger(api, intake_a.pk, member_token).json()["work_id"] for _ in range(3)]
    items = list(WorkItem.objects.filter(pk__in=ids))
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(longpoll._watcher.wait, item.pk, 10, "key-a") for item in items[:2]]
        wait_for(lambda: longpoll._watcher._waiting == 2, 5, what="key a's two waiters")
        assert longpoll._watcher.wait(items[2].pk, 10, "key-a") is False  # its share is used
        other = pool.submit(longpoll._watcher.wait, items[2].pk, 10, "key-b")
        wait_for(lambda: longpoll._watcher._waiting == 3, 5, what="key b waiting too")
        WorkItem.objects.filter(pk__in=ids).update(status="failed")
        assert all(f.result(timeout=10) for f in [*busy, other])
    assert longpoll._watcher._held == {}


@pytest.mark.django_db(transaction=True)
def test_one_organization_takes_at_most_its_share_whatever_its_keys(intake_a, member_token,
                                                                     api, settings):
    """4 slots, 2 per key, 3 per organization: an organization spreading its long-polls over
    several keys still leaves the others a slot; its own keys are refused past the share."""
    settings.AUXOT_LONG_POLL_MAX_WAITERS = 4
    settings.AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY = 2
    settings.AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG = 3
    ids = [trigger(api, intake_a.pk, member_token).json()["work_id"] for _ in range(4)]
    items = list(WorkItem.objects.filter(pk__in=ids))
    wait = longpoll._watcher.wait
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(wait, items[0].pk, 10, "key-a1", "org-a"),
                pool.submit(wait, items[1].pk, 10, "key-a2", "org-a"),
                pool.submit(wait, items[2].pk, 10, "key-a3", "org-a")]
        wait_for(lambda: longpoll._watcher._waiting == 3, 5, what="org a's three waiters")
        assert wait(items[3].pk, 10, "key-a4", "org-a") is False  # a fresh key: the org's share
        assert wait(items[3].pk, 10, "key-a1", "org-a") is False
        other = pool.submit(wait, items[3].pk, 10, "key-b", "org-b")  # the slot left is b's
        wait_for(lambda: longpoll._watcher._waiting == 4, 5, what="org b waiting too")
        assert longpoll._watcher._held[("org", "org-a")] == 3
        WorkItem.objects.filter(pk__in=ids).update(status="failed")
        assert all(f.result(timeout=10) for f in [*busy, other])
    assert longpoll._watcher._held == {}


def test_the_organization_share_leaves_others_a_quarter_by_default():
    """The default share, as the settings module computes it from the process's slots."""
    code = ("from django.conf import settings as s; "
            "print(s.AUXOT_LONG_POLL_MAX_WAITERS, s.AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY, "
            "s.AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG)")
    seen = {}
    for slots in ("12", "4", "1"):
        out = subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code],
                             cwd=ROOT, env={**process_env(AUXOT_LONG_POLL_MAX_WAITERS=slots),
                                            "DJANGO_SETTINGS_MODULE": "auxot.settings"},
                             capture_output=True, text=True, check=True).stdout.split()
        seen[slots] = tuple(int(v) for v in out)
    assert seen == {"12": (12, 6, 9), "4": (4, 2, 3), "1": (1, 1, 1)}


@pytest.mark.django_db(transaction=True)
def test_a_watcher_that_cannot_start_leaks_no_slot(intake_a, member_token, api, monkeypatch):
    """A process out of threads: the waiter fails, and the next one starts the watcher."""
    work_id = trigger(api, intake_a.pk, member_token).json()["work_id"]
    item = WorkItem.objects.get(pk=work_id)
    wait_for(lambda: longpoll._watcher._thread is None, 5, what="an earlier watcher to stop")
    real_start = threading.Thread.start

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        longpoll._watcher.wait(item.pk, 1, "key-a")
    assert (longpoll._watcher._waiting, longpoll._watcher._held) == (0, {})
    assert longpoll._watcher._thread is None and longpoll._watcher._events == {}
    monkeypatch.setattr(threading.Thread, "start", real_start)
    WorkItem.objects.filter(pk=item.pk).update(status="failed")
    assert longpoll._watcher.wait(item.pk, 5, "key-a") is True


@pytest.mark.django_db(transaction=True)
def test_one_watcher_serves_many_waiters(intake_a, member_token, api):
    ids = [trigger(api, intake_a.pk, member_token).json()["work_id"] for _ in range(5)]
    items = list(WorkItem.objects.filter(pk__in=ids))
    wait_for(lambda: not any(t.name == "auxot-longpoll" for t in threading.enumerate()), 5,
             what="an earlier watcher to finish")
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(longpoll._watcher.wait, item.pk, 10) for item in items * 2]
        wait_for(lambda: len(longpoll._watcher._events) == 5, 5, what="10 waiters on 5 items")
        assert sum(t.name == "auxot-longpoll" for t in threading.enumerate()) == 1
        WorkItem.objects.filter(pk__in=ids).update(status="failed")
        started = time.monotonic()
        assert all(f.result(timeout=10) for f in futures)
    assert time.monotonic() - started < 5
    wait_for(lambda: longpoll._watcher._thread is None, 5, what="the idle watcher to stop")


# --- the serving setup, for real: gunicorn gthread on the test database --------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn():
    port = _free_port()
    # 48 waiters per process, as this test was written for: 50 long-polls all wait.
    env = process_env(GUNICORN_WORKERS="2", GUNICORN_BIND=f"127.0.0.1:{port}",
                      GUNICORN_ACCESSLOG="", GUNICORN_THREADS="64",
                      AUXOT_LONG_POLL_MAX_WAITERS="48",
                      AUXOT_LONG_POLL_MAX_WAITERS_PER_KEY="48",  # one key polls them all
                      AUXOT_LONG_POLL_MAX_WAITERS_PER_ORG="48")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "auxot.wsgi"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{base}/v1/problems/not_found", timeout=5).status_code == 200
        except requests.RequestException:
            assert proc.poll() is None, proc.stderr.read().decode()
            return False

    try:
        wait_for(up, 30, interval=0.2, what="gunicorn to answer")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _connections_to_test_db() -> int | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                       [connection.settings_dict["NAME"]])
        return cursor.fetchone()[0]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_fifty_long_polls_do_not_block_a_trigger(gunicorn, intake_a, member_token, settings):
    headers = {"Authorization": f"Bearer {member_token}"}
    trigger_url = f"{gunicorn}/v1/intake/{intake_a.pk}"
    work_ids = [requests.post(trigger_url, json={}, headers=headers, timeout=10).json()["work_id"]
                for _ in range(5)]  # no qcluster: they stay pending for the whole test
    before = _connections_to_test_db()
    in_flight = threading.Semaphore(0)
    done = []

    def long_poll(n):
        in_flight.release()
        response = requests.get(f"{trigger_url}/work/{work_ids[n % 5]}", params={"wait": 8},
                                headers=headers, timeout=30)
        done.append(response.status_code)

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(long_poll, n) for n in range(50)]
        for _ in range(50):
            assert in_flight.acquire(timeout=10)
        time.sleep(1.5)  # let all 50 reach the server and start waiting
        waiting = 50 - len(done)
        during = _connections_to_test_db()
        started = time.monotonic()
        response = requests.post(trigger_url, json={"n": 1}, headers=headers, timeout=10)
        trigger_seconds = time.monotonic() - started
        for future in futures:
            future.result()
    assert response.status_code == 202
    assert waiting >= 45, f"only {waiting} long-polls were waiting"
    # Blocked behind the polls, it would answer when they do (~6.5 s from here, wait=8);
    # 4 s tells the two apart on a loaded 2-core box.
    assert trigger_seconds < 4.0, f"trigger took {trigger_seconds:.2f} s behind 50 long-polls"
    assert done == [200] * 50
    if before is not None:  # PostgreSQL: waiting requests hold no connection of their own;
        # what is open is each process's pool (DB_POOL_MAX_SIZE at most), not one per waiter.
        pooled = 2 * settings.DB_POOL_MAX_SIZE
        assert during - before <= pooled, f"{during - before} connections for 50 waiters"


# --- the connection budget: a burst of long-polls against the default configuration ---------
def _max_connections_during(stop: threading.Event, dbname: str, seen: list[int]) -> None:
    import psycopg

    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                         user=db["USER"] or "postgres", password=db["PASSWORD"] or None,
                         dbname=dbname, autocommit=True) as probe:
        for _ in range(600):  # bounded: 60 s at most
            if stop.is_set():
                return
            seen.append(probe.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                      [dbname]).fetchone()[0])
            time.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_two_hundred_long_polls_stay_within_the_connection_budget(intake_a, member_token,
                                                                  settings):
    if connection.vendor != "postgresql":
        pytest.skip("counts PostgreSQL server connections (pg_stat_activity); SQLite has none")
    from tests.processes import Gunicorn

    web = Gunicorn(workers=None).start()  # gunicorn.conf.py's defaults: processes and threads
    headers = {"Authorization": f"Bearer {member_token}"}
    url = f"{web.url}/v1/intake/{intake_a.pk}"
    stop, seen = threading.Event(), []
    try:
        work_id = requests.post(url, json={}, headers=headers, timeout=30).json()["work_id"]
        before = _connections_to_test_db()
        sampler = threading.Thread(target=_max_connections_during,
                                   args=(stop, connection.settings_dict["NAME"], seen))
        sampler.start()
        with ThreadPoolExecutor(200) as pool:
            polls = [pool.submit(requests.get, f"{url}/work/{work_id}", params={"wait": 3},
                                 headers=headers, timeout=60) for _ in range(200)]
            time.sleep(1)  # the burst is in flight
            triggered = requests.post(url, json={"n": 2}, headers=headers, timeout=60)
            statuses = [future.result(timeout=90).status_code for future in polls]
    finally:
        stop.set()
        web.stop()
    sampler.join(10)
    assert statuses == [200] * 200, sorted(set(statuses))
    assert triggered.status_code == 202, triggered.text
    assert WorkItem.objects.filter(pk=triggered.json()["work_id"]).exists()
    bound = settings.AUXOT_WEB_PROCESSES * settings.DB_POOL_MAX_SIZE
    # + the sampler's own connection and a little slack for connections being replaced
    assert max(seen) - before <= bound + 3, f"{max(seen) - before} connections, bound {bound}"
