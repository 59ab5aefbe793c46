"""Callbacks under load: `python bench/callbacks.py --items 1000` (see BENCHMARKS.md).

Real receivers in a process of their own (threaded HTTP servers that verify every signature
and log every request by webhook-id; apart, so they do not share a GIL with the bench's
posting threads): a healthy one (204 at once), a flaky one (40 % 500, 5 % hang
15 s then 500, else 204) and, for one phase, one that hangs 20 s on every request. gunicorn
(2 workers) takes the triggers over HTTP (16 threads); one qcluster (2 workers, its callback
dispatcher inside) runs the 2-step transform workflow and sends the callbacks. Database:
DATABASE_URL (default postgres://postgres@127.0.0.1:5432/auxot_bench_callbacks).

`--dispatcher process` sends the callbacks from `manage.py callbacks`, a process of its own
beside a qcluster that sends none (AUXOT_CALLBACK_THREADS=0): the layout of a host running
deploy/systemd's auxot-callbacks.service next to auxot-worker.service. Each child process
here gets a session of its own, so the kernel shares the CPU between them as systemd shares it
between services (per session with autogroup, per service with cgroups), not between their
threads. The default (`cluster`) is one qcluster with its dispatcher inside.

`--embedded` runs only phase 3, on what `make run` runs (a fresh SQLite file, the ORM
broker, the demo's callback settings): the issue's own case for a hanging neighbour.

Phases, one run:
1. off: N items on an intake without callbacks: engine items/s (run again once phase 2
   has settled; phase 2's ratio is to the mean of both, as the box's speed drifts).
2. on: N items alternating between a healthy and a flaky intake, as fast as they are
   accepted (the machine saturated): engine items/s; finish -> first attempt (healthy;
   also from the delivery's creation: the dispatcher's part), finish -> first 2xx (flaky)
   beside the floor the schedule and the hangs alone give, retry due -> started, breaker
   openings, the dispatcher's CPU per attempt, and where the machine's CPU went while 'off'
   and 'on' ran (bench.common.CpuByRole: the bench's callers, the receivers, gunicorn,
   qcluster, the callbacks process, PostgreSQL, the rest).
2b. paced: --paced-items of the same mix at --paced-rate triggers/s (by default 40 % of what
   phase 2 drained: below what the machine drains, however fast it is that day): the same
   latencies when the workers are not saturated.
3. hanging: 20 items to the always-hanging receiver, then 100 to the healthy one:
   the healthy receiver's finish -> first attempt p50/p99.
4. crash: N/2 items to the flaky intake while qcluster (and the callbacks process, if any)
   is SIGKILLed twice (and restarted):
   lost (finished items whose callback never got a 2xx and is not failed for good) and
   duplicated (webhook-ids answered 2xx more than once) over every phase.
"""

import argparse
import os
import random
import shutil
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL",
                      "postgres://postgres@127.0.0.1:5432/auxot_bench_callbacks")

from bench import common

# The operator's setup the figures are asked for: five attempts, 1, 2, 4 and 8 s apart. With
# a 45 % failure rate 0.45^5 = 1.8 % of the flaky receiver's deliveries fail after all five
# (reported apart; "first 2xx" is over those that got one). No jitter, so each retry's due
# moment is exactly the previous attempt's end plus its delay (the lateness figure).
SCHEDULE = "0,1,2,4,8"
PACED_SHARE = 0.4  # the paced phase's rate, as a share of the burst's drain rate
ENV = {"AUXOT_CALLBACK_ALLOW_HTTP": "1", "AUXOT_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
       "AUXOT_CALLBACK_RETRY_SCHEDULE": SCHEDULE, "AUXOT_CALLBACK_JITTER": "0",
       "AUXOT_WORKERS": "2"}  # the callback timeout is the product's default (5 s)


class Receiver:
    """A threaded HTTP receiver: `behaviour()` -> (status, seconds to hang first)."""

    def __init__(self, name: str, behaviour):
        self.name, self.behaviour = name, behaviour
        self.lock = threading.Lock()
        self.first_seen: dict[str, float] = {}
        self.first_ok: dict[str, float] = {}
        self.oks: dict[str, int] = defaultdict(int)
        self.requests = self.bad_signatures = self.cut = 0
        self.hooks: dict = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # kept-alive answers must not wait for an ACK

            def log_message(self, *args):
                pass

            def do_POST(self):
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = self.rfile.read(length)
                except OSError:
                    body = b""
                if len(body) < length:  # the sender was killed mid-request: nothing to verify
                    with receiver.lock:
                        receiver.cut += 1
                    self.close_connection = True
                    return
                webhook_id = self.headers.get("webhook-id", "")
                intake = self.path.rsplit("/", 1)[-1]
                try:
                    receiver.hooks[intake].verify(body, dict(self.headers))
                    valid = True
                except Exception:  # a bad signature, or an intake this receiver was not told of
                    valid = False
                status, hang = receiver.behaviour()
                with receiver.lock:
                    receiver.requests += 1
                    receiver.bad_signatures += not valid
                    receiver.first_seen.setdefault(webhook_id, arrived)
                if hang:
                    time.sleep(hang)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    return  # the dispatcher gave up (timeout) or was killed
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.oks[webhook_id] += 1
                        receiver.first_ok.setdefault(webhook_id, time.time())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stats(self) -> dict:
        with self.lock:
            return {"first_seen": dict(self.first_seen), "first_ok": dict(self.first_ok),
                    "oks": dict(self.oks), "requests": self.requests,
                    "bad_signatures": self.bad_signatures, "cut": self.cut}


def _receivers_serve(conn) -> None:
    """The receivers' process: report the ports, take the secrets, answer `stats`. It runs
    niced: the receivers stand for other machines, and must not take the CPU of the engine
    whose pace the bench compares with callbacks on and off."""
    from standardwebhooks.webhooks import Webhook

    os.nice(10)

    receivers = {"healthy": Receiver("healthy", healthy), "flaky": Receiver("flaky", flaky),
                 "hanging": Receiver("hanging", hanging)}
    conn.send({name: r.httpd.server_port for name, r in receivers.items()})
    while True:
        command, payload = conn.recv()
        if command == "secrets":
            for receiver in receivers.values():
                receiver.hooks = {i: Webhook(secret) for i, secret in payload.items()}
            conn.send("ok")
        elif command == "stats":
            conn.send({name: r.stats() for name, r in receivers.items()})
        else:
            return


class Receivers:
    """The three receivers, in a child process started before Django opens a connection."""

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_receivers_serve, args=(child,), daemon=True)
        self.proc.start()
        self.ports = self.conn.recv()

    def url(self, name: str, intake_id: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/hook/{intake_id}"

    def secrets(self, secrets: dict[str, str]) -> None:
        self.conn.send(("secrets", secrets))
        self.conn.recv()

    def stats(self) -> dict:
        self.conn.send(("stats", None))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(("exit", None))
        self.proc.join(5)


def healthy():
    return 204, 0.0


def flaky():
    roll = random.random()
    if roll < 0.05:
        return 500, 15.0
    if roll < 0.45:
        return 500, 0.0
    return 204, 0.0


def hanging():
    return 500, 20.0


def _intake(label: str, callback: bool):
    from django.contrib.auth import get_user_model

    from apikeys.services import apikey_issue
    from auxot.models import Membership
    from intakes.services import intake_create
    from workflows.models import Step, Workflow

    org = common.org_create(f"cb-{label}")
    user = get_user_model().objects.create_user(org.slug, f"{org.slug}@example.com", None)
    Membership.objects.create(user=user, org=org, role="admin")
    workflow = Workflow.objects.create(org=org, name=org.slug, slug=org.slug)
    for position in (1, 2):
        Step.objects.create(workflow=workflow, position=position, name=f"t{position}",
                            kind="transform", config={"expression": common.GREETING})
    intake = intake_create(org=org, workflow=workflow, name=org.slug)
    token = apikey_issue(org=org, label=org.slug, user=user).token
    return intake, token, callback


def _fire(base: str, targets: list[tuple], count: int, rate: float | None = None) -> list[str]:
    """POST `count` triggers, round-robin over (intake, token), 16 threads; the work ids.
    With `rate`, trigger i is sent at i / rate seconds (paced), not as fast as possible."""
    import requests

    local = threading.local()
    start = time.monotonic()

    def post(i: int) -> str | None:
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        intake, token = targets[i % len(targets)][:2]
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(f"{base}/v1/intake/{intake.pk}", json={"n": i},
                                      headers={"Authorization": f"Bearer {token}"}, timeout=60)
        return response.json()["work_id"] if response.status_code == 202 else None

    with ThreadPoolExecutor(16) as pool:
        return [w for w in pool.map(post, range(count)) if w]


def _wait_finished(ids: list[str], timeout: float) -> None:
    from tests.processes import wait_for
    from workflows.models import WorkItem

    wait_for(lambda: WorkItem.objects.filter(pk__in=ids, status__in=["completed", "failed"])
             .count() == len(ids), timeout=timeout, interval=0.5, what="items to finish")


def _wait_settled(ids: list[str], timeout: float) -> None:
    from intakes.models import CallbackDelivery
    from tests.processes import wait_for

    wait_for(lambda: CallbackDelivery.objects.filter(work_item_id__in=ids, state__in=[
        "delivered", "failed"]).count() == len(ids), timeout=timeout, interval=1.0,
        what="deliveries to settle")


def _span(ids: list[str]) -> float:
    """Seconds from the first item's creation to the last one's finish."""
    from django.db.models import Max, Min

    from workflows.models import WorkItem

    span = WorkItem.objects.filter(pk__in=ids).aggregate(a=Min("created_at"), b=Max("finished_at"))
    return (span["b"] - span["a"]).total_seconds()


def _rate(ids: list[str]) -> float:
    return len(ids) / _span(ids)


def _finish_to(ids: list[str], moments: dict[str, float], *, attempts: bool) -> list[float]:
    """Per item: seconds from finished_at to the first attempt (rows) or to `moments`."""
    from intakes.models import CallbackAttempt, CallbackDelivery

    rows = CallbackDelivery.objects.filter(work_item_id__in=ids).values_list(
        "pk", "webhook_id", "work_item__finished_at")
    out = []
    firsts = {}
    if attempts:
        for delivery_id, started in CallbackAttempt.objects.filter(
                delivery__work_item_id__in=ids, number=1).values_list("delivery_id", "started_at"):
            firsts[delivery_id] = started.timestamp()
    for pk, webhook_id, finished in rows:
        at = firsts.get(pk) if attempts else moments.get(webhook_id)
        if at is not None:
            out.append(at - finished.timestamp())
    return out


def retry_lateness(ids: list[str]) -> list[float]:
    """Per retry of these items' deliveries: seconds from when it was due (the previous
    attempt's end plus the schedule's delay; no jitter) to when it started."""
    from intakes.models import CallbackAttempt

    delays = [float(x) for x in SCHEDULE.split(",")]
    previous: dict = {}
    late = []
    for delivery_id, number, started, finished in CallbackAttempt.objects.filter(
            delivery__work_item_id__in=ids).order_by("delivery_id", "number").values_list(
            "delivery_id", "number", "started_at", "finished_at"):
        before = previous.get(delivery_id)
        if before is not None and before[0] == number - 1 and before[1] is not None:
            due = before[1].timestamp() + delays[number - 1]
            late.append(started.timestamp() - due)
        previous[delivery_id] = (number, finished)
    return late


class BreakerWatch(threading.Thread):
    """Samples the endpoints' breakers every 0.2 s: which ones opened, and for how long."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.opened: dict[str, int] = defaultdict(int)
        self.open_seconds: dict[str, float] = defaultdict(float)
        self.stopping = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from intakes.models import CallbackEndpoint

        was_open: set[str] = set()
        while not self.stopping.wait(0.2):
            now_open = set(CallbackEndpoint.objects.filter(open_until__isnull=False)
                           .values_list("key", flat=True))
            for key in now_open - was_open:
                self.opened[key] += 1
            for key in now_open:
                self.open_seconds[key] += 0.2
            was_open = now_open
        connection.close()

    def stop(self) -> str:
        self.stopping.set()
        self.join(5)
        if not self.opened:
            return "never opened"
        return ", ".join(f"{key} opened {count}x (~{self.open_seconds[key]:.0f} s open)"
                         for key, count in self.opened.items())


def _created_to_first_attempt(ids: list[str]) -> list[float]:
    """Per item: seconds from its delivery's creation (right after the item's commit: when a
    poll first sees it finished) to its first attempt: the dispatcher's part alone."""
    from django.db.models import F

    from intakes.models import CallbackAttempt

    return [gap.total_seconds() for gap in CallbackAttempt.objects.filter(
        delivery__work_item_id__in=ids, number=1).annotate(
        gap=F("started_at") - F("delivery__created_at")).values_list("gap", flat=True)]


def schedule_floor(samples: int = 100_000) -> list[float]:
    """finish -> first 2xx if sending cost nothing: the retry schedule and the flaky
    receiver's hangs alone (a hang costs the callback timeout), simulated."""
    from django.conf import settings

    timeout = settings.AUXOT_CALLBACK_TIMEOUT_SECONDS
    delays = [float(x) for x in SCHEDULE.split(",")]
    out = []
    for _ in range(samples):
        t = 0.0
        for delay in delays:
            t += delay
            status, hang = flaky()
            t += min(hang, timeout)
            if status < 300:
                out.append(t)
                break
    return out


def _cluster(dispatcher: str) -> tuple[common.Proc, common.Proc]:
    """(qcluster, the process whose threads send the callbacks): the same one, or, for
    `process`, `manage.py callbacks` beside a qcluster that sends none."""
    if dispatcher == "cluster":
        cluster = common.qcluster(**ENV)
        return cluster, cluster
    cluster = common.qcluster(**{**ENV, "AUXOT_CALLBACK_THREADS": "0"})
    return cluster, common.Proc([sys.executable, "manage.py", "callbacks", "--threads", "64"],
                                **ENV).start()


def _pcts(values: list[float]) -> str:
    return (f"p50={common.percentile(values, 50):.3f}s p99={common.percentile(values, 99):.3f}s "
            f"n={len(values)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--paced-items", type=int, default=600)
    parser.add_argument("--paced-rate", type=float, default=None,
                        help="triggers/s of the paced phase; by default PACED_SHARE of the "
                             "rate the engine drained with callbacks on (phase 2), so it stays "
                             "below what this machine drains, however fast it is today")
    parser.add_argument("--dispatcher", choices=("cluster", "process"), default="cluster",
                        help="where callbacks are sent from: qcluster's main process (the "
                             "default), or `manage.py callbacks`, a process of its own beside a "
                             "qcluster that sends none")
    parser.add_argument("--embedded", action="store_true",
                        help="only the hanging-neighbour case, on make run's embedded default")
    args = parser.parse_args()
    if args.embedded:
        return embedded(hanging_items=20, healthy_items=100)
    receivers = Receivers()
    common.django_setup()
    from django.conf import settings

    callback_timeout = settings.AUXOT_CALLBACK_TIMEOUT_SECONDS
    common.bench_database_reset()  # no item, delivery or breaker of an earlier run counts
    from intakes.models import CallbackAttempt, CallbackDelivery, Intake

    print(f"machine: {os.cpu_count()} cores; loadavg at start "
          "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    plain = _intake("off", False)
    good, bad, stuck = _intake("healthy", True), _intake("flaky", True), _intake("hang", True)
    receivers.secrets({str(t[0].pk): t[0].signing_secret for t in (good, bad, stuck)})
    for (intake, _, _), name in ((good, "healthy"), (bad, "flaky"), (stuck, "hanging")):
        Intake.objects.filter(pk=intake.pk).update(callback_url=receivers.url(name, intake.pk))
    port = common.free_port()
    web = common.gunicorn(port, **ENV)
    base = f"http://127.0.0.1:{port}"
    cluster, sender = _cluster(args.dispatcher)
    breakers = BreakerWatch()
    breakers.start()
    all_ids: list[str] = []
    try:
        n = args.items
        roles = {"bench's callers": [os.getpid()], "receivers": [receivers.proc.pid],
                 "gunicorn": [web.pid], "qcluster": [cluster.pid]}
        if sender is not cluster:
            roles["callbacks process"] = [sender.pid]
        # 1. off
        busy = common.CpuBusy().start()
        where_off = common.CpuByRole(roles).start()
        off = _fire(base, [plain], n)
        _wait_finished(off, timeout=max(300, n))
        busy_off = busy.stop()
        where_off.stop()
        rate_off = _rate(off)
        # 2. on
        busy = common.CpuBusy().start()
        where_on = common.CpuByRole(roles).start()
        cpu_before = common._cpu_seconds([sender.pid])
        queued_before = common.run_queue_seconds(sender.pid)
        on = _fire(base, [good, bad], n)
        _wait_finished(on, timeout=max(300, n))
        busy_on = busy.stop()
        where_on.stop()
        queued_after = common.run_queue_seconds(sender.pid)
        span_on = _span(on)
        rate_on = _rate(on)
        all_ids += on
        _wait_settled(on, timeout=900)
        # The dispatcher runs in qcluster's main process (steps in its child processes), or
        # alone in the callbacks process.
        cpu_dispatcher = common._cpu_seconds([sender.pid]) - cpu_before
        attempts_on = CallbackAttempt.objects.filter(delivery__work_item_id__in=on).count()
        on_good = [w for w in on if CallbackDelivery.objects.filter(
            work_item_id=w, intake_id=good[0].pk).exists()]
        created_to_first = _created_to_first_attempt(on_good)
        on_bad = sorted(set(on) - set(on_good))
        first_attempt = _finish_to(on_good, {}, attempts=True)
        first_ok_flaky = _finish_to(on_bad, receivers.stats()["flaky"]["first_ok"],
                                    attempts=False)
        late = retry_lateness(on)
        on_failed = CallbackDelivery.objects.filter(work_item_id__in=on_bad,
                                                    state="failed").count()
        # 2'. off again, once 'on' has settled: the box's speed drifts within minutes, and
        # the first phase also warms everything up; off before and after brackets 'on'.
        busy = common.CpuBusy().start()
        off_after = _fire(base, [plain], n)
        _wait_finished(off_after, timeout=max(300, n))
        busy_off_after = busy.stop()
        rate_off_after = _rate(off_after)
        # 2b. paced: the same mix at a rate the machine keeps up with (not saturated)
        if args.paced_rate is None:
            args.paced_rate = round(PACED_SHARE * rate_on, 1)
        paced = _fire(base, [good, bad], args.paced_items, rate=args.paced_rate)
        _wait_finished(paced, timeout=max(300, n))
        _wait_settled(paced, timeout=900)
        all_ids += paced
        paced_good = [w for w in paced if CallbackDelivery.objects.filter(
            work_item_id=w, intake_id=good[0].pk).exists()]
        paced_first = _finish_to(paced_good, {}, attempts=True)
        paced_ok = _finish_to(sorted(set(paced) - set(paced_good)),
                              receivers.stats()["flaky"]["first_ok"], attempts=False)
        paced_late = retry_lateness(paced)
        # 3. hanging
        hang_ids = _fire(base, [stuck], 20)
        time.sleep(1.0)  # their attempts are in flight, hanging
        beside = _fire(base, [good], 100)
        _wait_finished(beside, timeout=300)
        _wait_settled(beside, timeout=300)
        beside_first = _finish_to(beside, {}, attempts=True)
        all_ids += beside
        # 4. crash
        crash_ids: list[str] = []
        kills = 0
        for part in range(3):
            crash_ids += _fire(base, [bad], n // 6)
            if part < 2:
                time.sleep(0.5)
                cluster.kill()
                if sender is not cluster:
                    sender.kill()
                kills += 1
                cluster, sender = _cluster(args.dispatcher)
        all_ids += crash_ids
        _wait_finished(crash_ids, timeout=max(300, n))
        _wait_settled(crash_ids, timeout=900)
    finally:
        breaker_note = breakers.stop()
        cluster.stop()
        if sender is not cluster:
            sender.stop()
        web.stop()
    stats = receivers.stats()
    receivers.close()
    lost, failed = 0, 0
    oks = {**stats["healthy"]["oks"]}
    for webhook_id, count in stats["flaky"]["oks"].items():
        oks[webhook_id] = oks.get(webhook_id, 0) + count
    for webhook_id, state in CallbackDelivery.objects.filter(
            work_item_id__in=all_ids).values_list("webhook_id", "state"):
        if state == "failed":
            failed += 1
        elif oks.get(webhook_id, 0) == 0:
            lost += 1
    lost += len(all_ids) - CallbackDelivery.objects.filter(work_item_id__in=all_ids).count()
    duplicated = sum(1 for count in oks.values() if count > 1)
    from django.db.models import Count

    from intakes.models import CallbackAttempt

    recorded_twice = CallbackAttempt.objects.filter(
        delivery__work_item_id__in=all_ids, status_code__gte=200, status_code__lt=300,
    ).values("delivery_id").annotate(n=Count("pk")).filter(n__gt=1).count()
    bad_signatures = sum(r["bad_signatures"] for r in stats.values())
    where = ("qcluster's main process" if args.dispatcher == "cluster"
             else "`manage.py callbacks`, its own process")
    print(f"items={n} schedule={SCHEDULE} dispatcher={args.dispatcher} at "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"finish->first attempt, healthy receiver: {_pcts(first_attempt)}")
    print(f"  of which delivery created (the item's commit) -> first attempt: "
          f"{_pcts(created_to_first)}")
    print(f"finish->first 2xx, flaky receiver (40% 500, 5% hang 15 s; callback timeout "
          f"{callback_timeout:g} s): {_pcts(first_ok_flaky)}; "
          f"failed after all {len(SCHEDULE.split(','))} attempts: {on_failed} of {len(on_bad)}")
    print(f"  the schedule's own floor for that receiver (simulated, zero cost per attempt): "
          f"{_pcts(schedule_floor())}")
    print(f"retry due -> retry started (both receivers): {_pcts(late)}")
    print(f"circuit breakers: {breaker_note}")
    print(f"paced, {len(paced)} items at {args.paced_rate:g}/s: finish->first attempt, healthy "
          f"{_pcts(paced_first)}; finish->first 2xx, flaky {_pcts(paced_ok)}; retry due -> "
          f"started {_pcts(paced_late)}")
    print(f"finish->first attempt, healthy receiver while another hangs on every request: "
          f"{_pcts(beside_first)} (hanging items={len(hang_ids)})")
    off_mean = (rate_off + rate_off_after) / 2
    print(f"engine items/s: callbacks off {rate_off:.1f} before and {rate_off_after:.1f} after, "
          f"on {rate_on:.1f} (ratio {rate_on / off_mean:.2f} to their mean; "
          f"{rate_on / rate_off:.2f} to the first alone); CPU busy while the items ran: off "
          f"{busy_off:.0%} and {busy_off_after:.0%}, on {busy_on:.0%} "
          f"(of {os.cpu_count()} cores)")
    print(f"where the CPU went while 'off' ran (until its last item finished): "
          f"{where_off.summary()}")
    print(f"  and while 'on' ran: {where_on.summary()}")
    print(f"CPU during 'on' (until settled): dispatcher ({where}) "
          f"{cpu_dispatcher:.1f} s = {cpu_dispatcher / attempts_on * 1000:.2f} ms per attempt "
          f"({attempts_on} attempts)")
    if queued_before and queued_after:
        # Runnable but not running: a starved process's threads queue for a CPU. The process
        # holds the dispatcher's threads (in qcluster, also the engine's ticker; steps run in
        # its children), so this says whether callbacks waited for the CPU or for something
        # else.
        cpu = queued_after[0] - queued_before[0]
        queued = queued_after[1] - queued_before[1]
        print(f"  while 'on' ran ({span_on:.1f} s): {where}, its threads on a CPU "
              f"{cpu:.1f} s, runnable but waiting for one {queued:.1f} s "
              f"({queued / span_on:.1f} threads waiting on average)")
    killed = "qcluster" if args.dispatcher == "cluster" else "qcluster and the callbacks process"
    print(f"crash phase: {len(crash_ids)} flaky items, {kills} SIGKILLs of {killed}")
    print(f"deliveries checked={len(all_ids)} lost={lost} duplicated={duplicated} (receiver "
          f"answered 2xx twice for one webhook-id) recorded_twice={recorded_twice} (two 2xx "
          f"attempt rows for one delivery) "
          f"failed_after_all_attempts={failed} bad_signatures={bad_signatures} "
          f"receiver_requests={sum(r['requests'] for r in stats.values())} "
          f"cut_mid_body={sum(r['cut'] for r in stats.values())} (a SIGKILL during the send)")
    print("loadavg at end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def embedded(hanging_items: int, healthy_items: int) -> None:
    """`--embedded`: the hanging-neighbour case on what `make run` runs. A fresh SQLite file,
    django-q2's ORM broker and the demo's callback settings; one qcluster (its dispatcher
    inside) and the web server. `hanging_items` items call back to a receiver that hangs 20 s
    on every request, then `healthy_items` items to a healthy one: how long after finishing
    the healthy ones' first attempts go out, and how many of them lost a 2xx."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="auxot-bench-embedded-")
    os.environ["DATABASE_URL"] = f"sqlite:///{folder}/auxot.sqlite3"
    receivers = Receivers()
    common.django_setup()
    from django.conf import settings

    from intakes.demo.seed import DEMO_ENV
    from intakes.models import CallbackDelivery, Intake

    env = {**DEMO_ENV, "REDIS_URL": ""}  # the embedded default: the ORM broker
    print(f"machine: {os.cpu_count()} cores; loadavg at start "
          "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    good, stuck = _intake("healthy", True), _intake("hang", True)
    receivers.secrets({str(t[0].pk): t[0].signing_secret for t in (good, stuck)})
    for (intake, _, _), name in ((good, "healthy"), (stuck, "hanging")):
        Intake.objects.filter(pk=intake.pk).update(callback_url=receivers.url(name, intake.pk))
    port = common.free_port()
    web = common.gunicorn(port, **env)
    base = f"http://127.0.0.1:{port}"
    cluster = common.qcluster(**env)
    try:
        hang_ids = _fire(base, [stuck], hanging_items)
        time.sleep(1.0)  # their attempts are in flight, hanging
        beside = _fire(base, [good], healthy_items)
        _wait_finished(beside, timeout=300)
        _wait_settled(beside, timeout=300)
        beside_first = _finish_to(beside, {}, attempts=True)
        delivered = CallbackDelivery.objects.filter(work_item_id__in=beside,
                                                    state="delivered").count()
        hanging_attempted = CallbackDelivery.objects.filter(work_item_id__in=hang_ids,
                                                            attempts__gt=0).count()
    finally:
        cluster.stop()
        web.stop()
        receivers.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"embedded default (SQLite, ORM broker, schedule "
          f"{env['AUXOT_CALLBACK_RETRY_SCHEDULE']}, timeout "
          f"{settings.AUXOT_CALLBACK_TIMEOUT_SECONDS:g} s) at {datetime.now(UTC):%Y-%m-%d %H:%M} "
          f"UTC")
    print(f"finish->first attempt, healthy receiver while another hangs 20 s on every request: "
          f"{_pcts(beside_first)}; delivered {delivered} of {len(beside)}; hanging items "
          f"{len(hang_ids)}, {hanging_attempted} of them attempted meanwhile")
    print("loadavg at end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
