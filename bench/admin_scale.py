"""The admin and auditor pages on a large history: seed a PostgreSQL database, time its pages.

    .venv/bin/python bench/admin_scale.py \
        --database-url postgres://postgres@127.0.0.1:5432/auxot_scale_bench \
        [--items 200000] [--personas superuser,small-admin,big-admin] [--runs 5] \
        [--explain 3] [--json var/admin_scale.json] [--pages REGEX] [--reseed | --seed-only]

Seeding (skipped when the database already holds this seed with --items work items;
--reseed forces it): migrate, then four organizations (`scale-big` with 70 % of the items,
enterprise plan; `scale-small-1` business, `scale-small-2` pro, `scale-small-3` free, 10 %
each), a superuser (`scale-root`), per organization an admin (`<org>-admin`), an auditor
(`<org>-auditor`) and developer members, teams, workflows with their steps, intakes (every
other one with a callback URL) and API keys: intakes and keys through the product's
services (audited as in production), the rest through its models. Then the history by
COPY: work items over the last 90 days (86 % completed, 10 % failed, 2.5 % pending, 1.5 %
running; the unfinished ones recent), their step runs (failed steps retried up to three
times), the engine's `work_item.completed` / `work_item.failed` audit rows (an admin's
`work_item.canceled` for canceled ones), some `intake.rejected` rows, and a callback
delivery with its attempts for each finished item of an intake with a callback URL. Every
accepted trigger adds its `work_item.accepted` row to the audit log view by itself. The
tables are then vacuumed and analyzed, as autovacuum would have done on a real history.
Any other data in the database is emptied first: it must be a bench database, whose name
has a `scale` part or is one bench/common.py accepts (auxot_scale_bench, auxot_bench_x).

Timing, in this process with django.test.Client (force_login) against the same database:
the admin index, the changelist of every model registered with admin.site (enumerated,
not listed here), each with and without one filter (the first choice of its first list
filter, or the failed ones where a model has a status: `PREFERRED_FILTERS`), the audit log's
middle page, its search for one work item's id, its CSV export (whole, and the last 7
days), the work item list searched for a correlation id and for a work id, the Failed work
view, and one work item's, intake's and workflow's change page (the
persona's busiest intake, a failed item with a callback delivery). Each page is fetched once
to warm up, then `--runs` times per persona (superuser, the small tenant's and the big
tenant's admin by default; `small-auditor` and `big-auditor` too): the median and max
wall time of the GET (the whole body read, for a streamed export), the number of SQL
queries and the slowest query's time (median over the runs; an export's server-side cursor
FETCHes are not seen by Django, so neither counted nor timed). A page a persona may not see
(403) is listed with its status and not timed. Then the slowest pages, and for the
`--explain` slowest pages (each at its slowest persona) the slowest query with its
`EXPLAIN (ANALYZE, BUFFERS)` plan. Nothing here asserts a timing.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/auxot_scale_bench"
# A database this script may empty: one bench/common.py accepts, or a name with a `scale`
# part between underscores (auxot_scale_bench, scale_2; not auxot_escalations).
SCALE_DB_NAME = re.compile(r"^(?:[A-Za-z0-9]+_)*scale(?:_[A-Za-z0-9]+)*$")


@dataclass(frozen=True)
class Tenant:
    slug: str
    plan: str
    share: float  # of the work items
    workflows: int
    intakes: int
    developers: int  # members besides the admin and the auditor, each with a personal key
    team_keys: int


TENANTS = [
    Tenant("scale-big", "enterprise", 0.70, 8, 12, 30, 3),
    Tenant("scale-small-1", "business", 0.10, 3, 3, 3, 1),
    Tenant("scale-small-2", "pro", 0.10, 3, 3, 3, 0),
    Tenant("scale-small-3", "free", 0.10, 3, 3, 3, 0),
]
SMALL, BIG = "scale-small-1", "scale-big"
PERSONAS = {"superuser": ("scale-root", BIG), "small-admin": (f"{SMALL}-admin", SMALL),
            "big-admin": (f"{BIG}-admin", BIG), "small-auditor": (f"{SMALL}-auditor", SMALL),
            "big-auditor": (f"{BIG}-auditor", BIG)}
DEFAULT_PERSONAS = "superuser,small-admin,big-admin"
HISTORY_DAYS = 90
# Status mix of the history, and the error codes of the failed items.
STATUSES = [("completed", 0.86), ("failed", 0.10), ("pending", 0.025), ("running", 0.015)]
ERRORS = [("http_error", 0.4), ("bad_handoff", 0.3), ("step_timeout", 0.2), ("canceled", 0.1)]
# The filter a changelist is timed with, where the first choice of the first filter is not
# what people open it for: the failures.
PREFERRED_FILTERS = {"workflows.workitem": "status__exact=failed",
                     "auxot.auditevent": "event__exact=work_item.failed",
                     "intakes.callbackdelivery": "state__exact=failed"}
CHUNK = 10_000  # work items per COPY transaction
CUSTOMERS = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries",
             "Wayne Enterprises", "Tyrell", "Cyberdyne", "Soylent"]


def scale_database_check(url: str) -> str:
    """The database's name, if this script may empty it; exits otherwise (nothing touched)."""
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("this benchmark needs PostgreSQL (EXPLAIN ANALYZE, COPY): a postgres:// URL")
    name = common.database_name(url)
    if not (SCALE_DB_NAME.match(name) or common.BENCH_DB_NAME.match(name)):
        sys.exit(f"refusing to use database {name!r}: its name must have a 'scale' part or be "
                 f"a bench database (e.g. auxot_scale_bench, auxot_bench_mine)")
    return name


# --- seeding -------------------------------------------------------------------------------

def seed_present(items: int) -> bool:
    from auxot.models import Organization
    from workflows.models import WorkItem

    if Organization.objects.filter(slug__startswith="scale-").count() != len(TENANTS):
        return False
    return WorkItem.objects.filter(workflow__org__slug__startswith="scale-").count() == items


def database_empty() -> None:
    """Every table but the schema's bookkeeping (as bench/common.py's reset), after the name
    check."""
    from django.db import connection

    scale_database_check(common.database_url())
    tables = sorted(set(connection.introspection.table_names()) - common.KEPT_TABLES)
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(qn(t) for t in tables)} RESTART IDENTITY CASCADE")


@dataclass
class TenantCast:
    tenant: Tenant
    org: object
    admin: object
    keys: list  # ApiKey rows
    intakes: list  # (Intake, weight)
    workflows: list  # (Workflow, [(step id, position, name, kind)])


def cast_create() -> list[TenantCast]:
    """Organizations, users, memberships, teams, workflows, intakes and keys, through the
    product's models and services (audited as they would be)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from apikeys.services import apikey_issue
    from auxot.models import Membership, Organization, Team
    from intakes.models import Intake
    from intakes.services import intake_create
    from workflows.models import Step, Workflow

    users = get_user_model().objects
    casts = []
    with transaction.atomic():
        users.create_superuser("scale-root", "scale-root@example.com", None)
        for tenant in TENANTS:
            org = Organization.objects.create(name=tenant.slug.replace("-", " ").title(),
                                              slug=tenant.slug, plan=tenant.plan)
            team = Team.objects.create(org=org, name="Platform") if org.has_teams else None

            def member(username, role, org=org, team=team):
                user = users.create_user(username, f"{username}@example.com", None,
                                         is_staff=True)
                membership = Membership.objects.create(user=user, org=org, role=role)
                if team is not None and role != "auditor":
                    membership.teams.add(team)
                return user

            admin = member(f"{tenant.slug}-admin", "admin")
            member(f"{tenant.slug}-auditor", "auditor")
            keys = [apikey_issue(org=org, label=f"{tenant.slug} admin key", user=admin).key]
            for n in range(tenant.developers):
                dev = member(f"{tenant.slug}-dev-{n:02d}", "member")
                keys.append(apikey_issue(org=org, label=f"dev {n:02d} laptop", user=dev).key)
            for n in range(tenant.team_keys):
                keys.append(apikey_issue(org=org, label=f"CI {n}", team=team,
                                         created_by=admin).key)
            workflows = []
            for n in range(tenant.workflows):
                workflow = Workflow.objects.create(org=org, name=f"Flow {n + 1}",
                                                   slug=f"flow-{n + 1}")
                kinds = [("transform", {"expression": common.GREETING}),
                         ("delay", {"seconds": 1}),
                         ("transform", {"expression": "{done: `true`, n: input.n}"})]
                steps = []
                for position, (kind, config) in enumerate(kinds[:2 + n % 2], start=1):
                    step = Step.objects.create(workflow=workflow, position=position,
                                               name=f"{kind} {position}", kind=kind,
                                               config=config)
                    steps.append((step.pk, position, step.name, kind))
                workflows.append((workflow, steps))
            intakes = []
            for n in range(tenant.intakes):
                workflow = workflows[n % len(workflows)][0]
                intake = intake_create(org=org, workflow=workflow, name=f"Intake {n + 1}",
                                       team=team if team is not None and n % 3 == 2 else None,
                                       created_by=admin)
                if n % 2 == 0:  # set apart from the service: it would resolve the host
                    url = f"https://hooks.example.com/{tenant.slug}/{n + 1}?token=t0ps3cret"
                    Intake.objects.filter(pk=intake.pk).update(callback_url=url)
                    intake.callback_url = url
                intakes.append((intake, 1 / (n + 1)))  # a few busy intakes, a long tail
            casts.append(TenantCast(tenant, org, admin, keys, intakes, workflows))
    return casts


def _pick(rng: random.Random, weighted: list[tuple[object, float]]):
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


class Copier:
    """One COPY per table per chunk of work items."""

    COLUMNS = {
        "workflows_workitem": [
            "id", "workflow_id", "intake_id", "input", "status", "output", "error",
            "created_at", "started_at", "finished_at", "created_by_key_id", "created_by_ip",
            "correlation_id", "callback_url", "request_id", "redacted_at", "replay_of_id",
            "resumed_from_step", "step_keys", "replay_batch_id", "current_step", "next_run_at",
            "enqueued_at", "lease_token", "waiting_on", "waiting_since", "waiting_detail"],
        "workflows_steprun": ["work_item_id", "step_id", "attempt", "status", "started_at",
                              "finished_at", "output", "error", "state"],
        "auxot_auditevent": ["id", "org_id", "created_at", "event", "actor_user_id",
                             "actor_key_lookup", "actor_label", "object_type", "object_id",
                             "ip", "extra"],
        "intakes_callbackdelivery": [
            "id", "intake_id", "work_item_id", "webhook_id", "url", "endpoint",
            "uses_intake_default", "state", "attempts", "schedule_base", "last_status",
            "last_error", "created_at", "delivered_at", "next_attempt_at", "enqueued_at",
            "lease_token"],
        "intakes_callbackattempt": ["delivery_id", "number", "started_at", "finished_at", "url",
                                    "status_code", "latency_ms", "response_body", "error"],
    }

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple]] = {table: [] for table in self.COLUMNS}
        self.counts: dict[str, int] = dict.fromkeys(self.COLUMNS, 0)

    def add(self, table: str, row: tuple) -> None:
        self.rows[table].append(row)

    def flush(self) -> None:
        from django.db import connection, transaction

        with transaction.atomic(), connection.cursor() as cursor:
            for table, rows in self.rows.items():  # in foreign-key order
                if not rows:
                    continue
                columns = ", ".join(self.COLUMNS[table])
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                self.counts[table] += len(rows)
                rows.clear()


def history_copy(casts: list[TenantCast], items: int, rng: random.Random,
                 age_days: float = 0) -> dict[str, int]:
    """The work items and everything hanging off them, by COPY, CHUNK items at a time.
    `age_days` moves the finished history that much further back (bench/retention_scale.py:
    old enough for retention); the unfinished items stay recent."""
    from intakes.callbacks import endpoint_key

    now = datetime.now(UTC)
    copier = Copier()
    done = 0
    for index, cast in enumerate(casts):
        share = (items - done if index == len(casts) - 1
                 else round(items * cast.tenant.share))
        done += share
        endpoints = {intake.pk: endpoint_key(intake.callback_url, cast.org.pk)
                     for intake, _ in cast.intakes if intake.callback_url}
        steps_of = {workflow.pk: steps for workflow, steps in cast.workflows}
        for n in range(share):
            _item_rows(copier, cast, rng, now, n, steps_of, endpoints, age_days)
            if (n + 1) % CHUNK == 0:
                copier.flush()
        copier.flush()
    _rejections(copier, casts, rng, now, items // 100)
    copier.flush()
    return copier.counts


def _item_rows(copier, cast, rng, now, n, steps_of, endpoints, age_days=0) -> None:
    status = _pick(rng, STATUSES)
    if status in ("pending", "running"):  # unfinished work is recent
        created = now - timedelta(seconds=rng.uniform(1, 600))
    else:
        created = now - timedelta(days=age_days + HISTORY_DAYS * rng.random())
    admin_run = rng.random() < 0.02
    if admin_run:  # "New task" in the admin: no intake, no key
        workflow, steps = rng.choice(cast.workflows)
        intake, key = None, None
        correlation = f"admin:{cast.admin.username}"
    else:
        intake = _pick(rng, cast.intakes)
        workflow, steps = intake.workflow, steps_of[intake.workflow_id]
        key = rng.choice(cast.keys)
        correlation = f"ci-{cast.tenant.slug}-{n}" if rng.random() < 0.5 else ""
    item_id = _uuid(rng)
    customer = rng.choice(CUSTOMERS)
    started = created + timedelta(milliseconds=rng.uniform(2, 80))
    finished = output = error = next_run = None
    current, waiting_on, waiting_since = 0, "", None
    runs = []  # (step id, attempt, status, started, finished, output, error)
    at = started
    if status == "completed":
        for step_id, _position, _name, _kind in steps:
            end = at + timedelta(milliseconds=rng.uniform(1, 1200))
            runs.append((step_id, 1, "completed", at, end, {"n": n, "customer": customer},
                         None))
            at = end
        finished, current = at, len(steps)
        output = {"greeting": f"Hello, {customer}", "n": n}
    elif status == "failed":
        code = _pick(rng, ERRORS)
        failing = rng.randrange(len(steps))
        for step_id, _position, _name, _kind in steps[:failing]:
            end = at + timedelta(milliseconds=rng.uniform(1, 1200))
            runs.append((step_id, 1, "completed", at, end, {"n": n}, None))
            at = end
        step_id, position, name, _kind = steps[failing]
        for attempt in range(1, 1 + (rng.randint(1, 3) if code != "canceled" else 1)):
            end = at + timedelta(seconds=rng.uniform(0.1, 30))
            runs.append((step_id, attempt, "failed", at, end, None,
                         {"code": code, "message": f"{code} at {name}"}))
            at = end + timedelta(seconds=2 ** attempt)
        finished, current = at, failing
        error = {"code": code, "message": f"{code} at {name}", "step": name,
                 "step_position": position}
    elif status == "running":
        current = rng.randrange(len(steps))
        for step_id, _position, _name, _kind in steps[:current]:
            runs.append((step_id, 1, "completed", at, at, {"n": n}, None))
        step_id, _position, _name, kind = steps[current]
        waiting = kind == "delay"
        runs.append((step_id, 1, "waiting" if waiting else "running", at, None, None, None))
        waiting_on, waiting_since = ("delay", at) if waiting else ("", None)
        next_run = at + timedelta(seconds=1)
    else:
        started, next_run, waiting_on, waiting_since = None, created, "queue", created
    ip = f"203.0.113.{rng.randrange(1, 255)}" if intake is not None else None
    copier.add("workflows_workitem", (
        item_id, workflow.pk, intake.pk if intake else None,
        json.dumps({"ticket_id": f"SUP-{n}", "customer": customer, "n": n}), status,
        json.dumps(output) if output is not None else None,
        json.dumps(error) if error is not None else None,
        created, started, finished, key.pk if key else None, ip, correlation, "",
        uuid.UUID(int=rng.getrandbits(128)).hex, None, None, None, "{}", None, current,
        next_run, created, "", waiting_on, waiting_since, "{}"))
    for step_id, attempt, run_status, run_start, run_end, run_out, run_err in runs:
        copier.add("workflows_steprun", (
            item_id, step_id, attempt, run_status, run_start, run_end,
            json.dumps(run_out) if run_out is not None else None,
            json.dumps(run_err) if run_err is not None else None, "{}"))
    if finished is None:
        return
    canceled = error is not None and error["code"] == "canceled"
    copier.add("auxot_auditevent", (
        _uuid(rng), cast.org.pk, finished,
        "work_item.canceled" if canceled else f"work_item.{status}",
        cast.admin.pk if canceled else None, "",
        cast.admin.username if canceled else "engine", "workflows.workitem", str(item_id),
        "198.51.100.7" if canceled else None,
        json.dumps({"code": error["code"]} if error else {})))
    if intake is not None and intake.callback_url:
        _delivery_rows(copier, rng, intake, item_id, finished, endpoints[intake.pk])


def _delivery_rows(copier, rng, intake, item_id, finished, endpoint) -> None:
    delivery_id = _uuid(rng)
    failed = rng.random() < 0.05
    attempts = 10 if failed else _pick(rng, [(1, 0.9), (2, 0.07), (3, 0.03)])
    at = finished + timedelta(milliseconds=rng.uniform(20, 400))
    url = intake.callback_url.split("?")[0] + "?token=[redacted]"
    for number in range(1, attempts + 1):
        ok = number == attempts and not failed
        latency = rng.randint(30, 900)
        copier.add("intakes_callbackattempt", (
            delivery_id, number, at, at + timedelta(milliseconds=latency), url,
            200 if ok else 503, latency, "ok" if ok else "upstream unavailable", ""))
        at += timedelta(seconds=2 ** number)
    copier.add("intakes_callbackdelivery", (
        delivery_id, intake.pk, item_id, f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex}",
        intake.callback_url, endpoint, True, "failed" if failed else "delivered", attempts, 0,
        503 if failed else 200, "503 Service Unavailable" if failed else "", finished,
        None if failed else at, None, None, ""))


def _rejections(copier, casts, rng, now, count) -> None:
    """`intake.rejected` rows: bad keys, refused bodies (the audit table's other big event)."""
    for _ in range(count):
        cast = _pick(rng, [(c, c.tenant.share) for c in casts])
        key = rng.choice(cast.keys)
        code = rng.choice(["unauthorized", "invalid_json", "payload_too_large", "forbidden"])
        copier.add("auxot_auditevent", (
            _uuid(rng), cast.org.pk, now - timedelta(days=7 * rng.random()), "intake.rejected",
            None, key.lookup_id, key.label, "", "", f"203.0.113.{rng.randrange(1, 255)}",
            json.dumps({"code": code, "status": 401 if code == "unauthorized" else 400})))


def seed(items: int, reseed: bool) -> dict:
    from django.db import connection

    if not reseed and seed_present(items):
        print(f"seed present: {items} work items (--reseed to build it again)", flush=True)
        return {"seeded": False}
    started = time.monotonic()
    database_empty()
    casts = cast_create()
    counts = history_copy(casts, items, random.Random(20261201))
    copied = time.monotonic() - started
    with connection.cursor() as cursor:
        for table in Copier.COLUMNS:
            cursor.execute(f"VACUUM (ANALYZE) {table}")
        cursor.execute("ANALYZE")
    elapsed = time.monotonic() - started
    print(f"seeded in {elapsed:.1f} s ({copied:.1f} s to COPY, the rest VACUUM ANALYZE): "
          + ", ".join(f"{table} {n}" for table, n in counts.items()), flush=True)
    return {"seeded": True, "seconds": elapsed, "rows": counts}


# --- timing --------------------------------------------------------------------------------

@dataclass
class Result:
    page: str
    persona: str
    url: str
    status: int
    times_ms: list[float] = field(default_factory=list)
    queries: int = 0
    slowest_ms: float = 0.0  # median over the runs of each run's slowest query
    slowest_sql: str = ""
    plan: str = ""

    @property
    def median_ms(self) -> float:
        return common.median(self.times_ms)

    @property
    def max_ms(self) -> float:
        return max(self.times_ms, default=float("nan"))


def _get(client, url: str):
    response = client.get(url)
    if response.streaming:
        size = sum(len(chunk) for chunk in response.streaming_content)
    else:
        size = len(response.content)
    return response, size


def measure(client, page: str, persona: str, url: str, runs: int) -> Result:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response, _size = _get(client, url)  # warm-up (and: may this persona see it?)
    result = Result(page, persona, url, response.status_code)
    if response.status_code != 200:
        return result
    slowest = []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            _get(client, url)
            result.times_ms.append((time.perf_counter() - started) * 1000)
        queries = captured.captured_queries
        worst = max(queries, key=lambda q: float(q["time"]), default=None)
        result.queries = len(queries)
        if worst is not None:
            slowest.append(float(worst["time"]) * 1000)
            if float(worst["time"]) * 1000 >= max(slowest):
                result.slowest_sql = worst["sql"]
    result.slowest_ms = common.median(slowest) if slowest else 0.0
    return result


def _common_filter(model_admin, request, label: str) -> tuple[str, str] | None:
    """(the filter's parameter, its query string): the preferred filter of this model if
    its changelist offers it to this user, or the first choice of its first list filter."""
    from django.contrib.admin.options import IncorrectLookupParameters

    try:
        changelist = model_admin.get_changelist_instance(request)
    except IncorrectLookupParameters:
        return None
    choices = []
    for spec in changelist.filter_specs:
        choices += [(spec.title, choice["query_string"]) for choice in spec.choices(changelist)
                    if not choice["selected"] and choice["query_string"] not in ("", "?")]
    preferred = PREFERRED_FILTERS.get(label)
    for _title, query in choices:
        if preferred and preferred in query:
            return preferred.split("=")[0], query
    if not choices:
        return None
    title, query = choices[0]
    return str(title), query


def _request(user, path: str, query: str = ""):
    from django.test import RequestFactory

    request = RequestFactory().get(path + query)
    request.user = user
    return request


def persona_pages(persona: str) -> list[tuple[str, str]]:
    """(page name, URL) for what this persona would open: the same names for every persona,
    the objects and filter values of the persona's own organization."""
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django.db.models import Count
    from django.urls import reverse

    from auxot.models import AuditEvent, Organization
    from intakes.models import Intake
    from workflows.models import WorkItem

    username, org_slug = PERSONAS[persona]
    user = get_user_model().objects.get(username=username)
    org = Organization.objects.get(slug=org_slug)
    pages = [("admin index", reverse("admin:index"))]
    registry = sorted(admin.site._registry.items(), key=lambda kv: kv[0]._meta.label_lower)
    audit_admin = None
    for model, model_admin in registry:
        label = model._meta.label_lower
        base = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        pages.append((f"{label} list", base))
        request = _request(user, base)
        if not model_admin.has_view_or_change_permission(request):
            continue
        if model is AuditEvent:  # its changelist is the audit log view (AuditLogEntry)
            audit_admin = (model_admin, base)
        found = _common_filter(model_admin, request, label)
        if found:
            param, query = found
            pages.append((f"{label} list, filter {param}", base + query))
    items = WorkItem.objects.filter(workflow__org=org)
    busiest = (items.exclude(intake=None).values("intake").annotate(n=Count("pk"))
               .order_by("-n").first())
    intake = Intake.objects.get(pk=busiest["intake"])
    item = (items.filter(status="failed", intake=intake, callback_delivery__isnull=False)
            .order_by("-created_at").first()
            or items.filter(status="failed").order_by("-created_at").first())
    # As DateFieldListFilter's "Past 7 days" writes it (aware midnights).
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    week = "?" + urlencode({"created_at__gte": str(today - timedelta(days=7)),
                            "created_at__lt": str(today + timedelta(days=1))})
    if audit_admin is not None:
        model_admin, base = audit_admin
        changelist = model_admin.get_changelist_instance(_request(user, base))
        pages_total = max(1, -(-changelist.result_count // model_admin.list_per_page))
        pages += [
            ("audit log, middle page", f"{base}?p={max(1, pages_total // 2)}"),
            ("audit log, search a work item id", f"{base}?q={item.pk}"),
            ("audit log, CSV export (whole log)", reverse("admin:auxot_auditevent_export")),
            ("audit log, CSV export (last 7 days)",
             reverse("admin:auxot_auditevent_export") + week),
        ]
    correlation = items.exclude(correlation_id="").exclude(
        correlation_id__startswith="admin:").values_list("correlation_id", flat=True).first()
    pages += [
        ("work item list, search a correlation id",
         reverse("admin:workflows_workitem_changelist") + f"?q={correlation}"),
        ("work item list, search a work id",
         reverse("admin:workflows_workitem_changelist") + f"?q={item.pk}"),
        ("work item list, one intake's work",
         reverse("admin:workflows_workitem_changelist") + f"?intake__id__exact={intake.pk}"),
        ("failed work view", reverse("admin:workflows_workitem_failed")),
        ("work item change page (failed)",
         reverse("admin:workflows_workitem_change", args=[item.pk])),
        ("intake change page (busiest)", reverse("admin:intakes_intake_change",
                                                 args=[intake.pk])),
        ("workflow change page", reverse("admin:workflows_workflow_change",
                                         args=[intake.workflow_id])),
    ]
    return pages


def time_pages(personas: list[str], runs: int, only: str | None) -> list[Result]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    results = []
    for persona in personas:
        user = get_user_model().objects.get(username=PERSONAS[persona][0])
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        pages = persona_pages(persona)
        for page, url in pages:
            if only and not re.search(only, page):
                continue
            result = measure(client, page, persona, url, runs)
            results.append(result)
            timing = (f"median {result.median_ms:8.1f} ms, max {result.max_ms:8.1f} ms, "
                      f"{result.queries:3d} queries, slowest {result.slowest_ms:7.1f} ms"
                      if result.times_ms else "not timed")
            print(f"  {persona:13s} {result.status} {page:55s} {timing}", flush=True)
    return results


# A streamed queryset's query is run as a server-side cursor: explain the SELECT itself.
DECLARE = re.compile(r"^DECLARE \S+ (NO )?SCROLL CURSOR (WITH(OUT)? HOLD )?FOR ", re.I)


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {DECLARE.sub('', sql)}")
        return "\n".join(row[0] for row in cursor.fetchall())


# --- the report ----------------------------------------------------------------------------

def _cell(result: Result | None) -> str:
    if result is None:
        return ""
    if not result.times_ms:
        return f"({result.status})"
    return (f"{result.median_ms:.0f} / {result.max_ms:.0f} · {result.queries} q · "
            f"{result.slowest_ms:.0f}")


def table(results: list[Result], personas: list[str]) -> str:
    """One row per page; per persona: median / max ms of the GET · queries · slowest query ms."""
    by_key = {(r.page, r.persona): r for r in results}
    pages = list(dict.fromkeys(r.page for r in results))
    out = io.StringIO()
    out.write("| page | " + " | ".join(personas) + " |\n")
    out.write("| --- |" + " --- |" * len(personas) + "\n")
    for page in pages:
        cells = [_cell(by_key.get((page, persona))) for persona in personas]
        out.write(f"| {page} | " + " | ".join(cells) + " |\n")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--reseed", action="store_true", help="empty and seed again")
    parser.add_argument("--seed-only", action="store_true")
    parser.add_argument("--personas", default=DEFAULT_PERSONAS,
                        help=f"comma-separated, of: {', '.join(PERSONAS)}")
    parser.add_argument("--runs", type=int, default=5, help="timed GETs per page, after one")
    parser.add_argument("--pages", help="only the pages whose name matches this regex")
    parser.add_argument("--explain", type=int, default=3,
                        help="EXPLAIN (ANALYZE, BUFFERS) the slowest query of the N slowest pages "
                             "(each at its slowest persona)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    personas = [p.strip() for p in args.personas.split(",") if p.strip()]
    unknown = set(personas) - set(PERSONAS)
    if unknown:
        parser.error(f"unknown persona(s): {', '.join(sorted(unknown))}")
    if args.items < 1000:
        parser.error("--items: at least 1000")
    scale_database_check(args.database_url)
    os.environ["DATABASE_URL"] = args.database_url
    common.django_setup()
    logging.getLogger("django.request").setLevel(logging.ERROR)  # the 403s are expected

    print("loadavg start={:.2f} {:.2f} {:.2f}".format(*common.load()), flush=True)
    seeding = seed(args.items, args.reseed)
    if args.seed_only:
        return
    load_before = common.load()
    started = time.monotonic()
    results = time_pages(personas, args.runs, args.pages)
    timed = [r for r in results if r.times_ms]
    slowest = sorted(timed, key=lambda r: -r.median_ms)
    # The N slowest pages, each at its slowest persona (not one page's three personas).
    explained: list[Result] = []
    for result in slowest:
        if result.page not in {r.page for r in explained}:
            explained.append(result)
    explained = explained[:args.explain]
    for result in explained:
        with contextlib.suppress(Exception):  # a page's SQL that cannot be re-run alone
            result.plan = explain(result.slowest_sql)
    print(f"\ntimed in {time.monotonic() - started:.0f} s; loadavg before="
          "{:.2f} {:.2f} {:.2f}".format(*load_before),
          "after={:.2f} {:.2f} {:.2f}".format(*common.load()))
    print(f"\n{args.items} work items; cells: median / max ms of {args.runs} GETs · queries · "
          "slowest query ms (median); (403): not allowed, not timed\n")
    print(table(results, personas))
    print("slowest pages (median):")
    for result in slowest[:5]:
        print(f"  {result.median_ms:8.1f} ms  {result.page} [{result.persona}] {result.url}")
    for result in explained:
        print(f"\n--- {result.page} [{result.persona}]: slowest query "
              f"{result.slowest_ms:.1f} ms of {result.queries}\n{result.slowest_sql}\n")
        print(result.plan or "(EXPLAIN failed)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "items": args.items, "runs": args.runs, "personas": personas, "seed": seeding,
            "load": {"start": load_before, "end": common.load()},
            "results": [{**vars(r), "median_ms": r.median_ms, "max_ms": r.max_ms}
                        for r in results]}, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
