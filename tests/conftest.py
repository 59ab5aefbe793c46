"""The fixed cast: an admin, a member and an auditor of org A, and an outsider in org B."""

import ipaddress
import socket
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from apikeys.services import apikey_issue
from auxot.models import Membership, Organization, Team
from intakes.services import intake_create
from tests.tools import pytest_runtest_makereport, require_tool  # noqa: F401  (hook, helper)
from workflows.models import Step, Workflow

GREETING = "{greeting: join(' ', ['Hello,', input.customer || 'world']), n: input.n}"


@dataclass
class Cast:
    org_a: Organization
    org_b: Organization
    team_a: Team
    admin_a: object
    member_a: object
    auditor_a: object
    outsider_b: object


def _user(username: str, org: Organization, role: str):
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw",
                                                is_staff=True)
    Membership.objects.create(user=user, org=org, role=role)
    return user


@pytest.fixture(autouse=True)
def _presenter_caches_clear():
    """The poll's per-process heartbeat and provider caches never carry over between tests."""
    from workflows.presenters import presenter_caches_clear

    presenter_caches_clear()
    yield
    presenter_caches_clear()


@pytest.fixture(autouse=True)
def _poll_rate_reset():
    """Every test starts with full poll buckets: organization ids repeat between tests."""
    from intakes import pollrate

    pollrate.buckets.clear()
    yield
    pollrate.buckets.clear()


@pytest.fixture(autouse=True)
def _rejection_budget_reset():
    """Every test starts with fresh intake.rejected and failed sign-in write budgets, so
    whether a 4xx or a wrong password writes its audit row never depends on how many
    earlier tests sent in the same minute."""
    from auxot.services import sign_in_failure_budget
    from intakes import rejections

    rejections.budget.reset()
    sign_in_failure_budget.reset()
    yield
    rejections.budget.reset()
    sign_in_failure_budget.reset()


@pytest.fixture
def one_rate_limit_window(settings):
    """For a test that expects a 429 after N requests: a window so long (10**9 s, aligned to
    the epoch: this one ends in 2033) that its requests never straddle two windows, whatever
    the test's duration. tests/intakes/test_rate_limits.py travels in time instead."""
    settings.AUXOT_RATE_LIMIT_WINDOW_SECONDS = 10**9
    return settings


@pytest.fixture
def cast(db) -> Cast:
    org_a = Organization.objects.create(name="Org A", slug="org-a", plan="business")
    org_b = Organization.objects.create(name="Org B", slug="org-b", plan="business")
    return Cast(
        org_a=org_a, org_b=org_b, team_a=Team.objects.create(org=org_a, name="Platform"),
        admin_a=_user("admin_a", org_a, "admin"), member_a=_user("member_a", org_a, "member"),
        auditor_a=_user("auditor_a", org_a, "auditor"),
        outsider_b=_user("outsider_b", org_b, "admin"),
    )


def make_workflow(org: Organization, steps: list[tuple[str, dict]], name: str = "Flow"):
    workflow = Workflow.objects.create(org=org, name=name, slug=name.lower().replace(" ", "-"))
    for position, (kind, config) in enumerate(steps, start=1):
        Step.objects.create(workflow=workflow, position=position, name=f"{kind} {position}",
                            kind=kind, config=config)
    return workflow


@pytest.fixture
def workflow_a(cast):
    return make_workflow(cast.org_a, [("transform", {"expression": GREETING}),
                                      ("delay", {"seconds": 2})], name="Greet")


@pytest.fixture
def intake_a(cast, workflow_a):
    return intake_create(org=cast.org_a, workflow=workflow_a, name="Intake A",
                         created_by=cast.admin_a)


@pytest.fixture
def member_token(cast) -> str:
    return apikey_issue(org=cast.org_a, label="member key", user=cast.member_a).token


@pytest.fixture
def outsider_token(cast) -> str:
    return apikey_issue(org=cast.org_b, label="outsider key", user=cast.outsider_b).token


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def trigger(api: APIClient, intake_id, token: str, body=None, **extra):
    return api.post(f"/v1/intake/{intake_id}", data=body if body is not None else {"n": 1},
                    format="json", **bearer(token), **extra)


# --- Callbacks: a real HTTP receiver on 127.0.0.1 and an intake pointing at it ---
@pytest.fixture(scope="session")
def _receiver_server():
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def receiver(_receiver_server):
    _receiver_server.clear()
    return _receiver_server


@pytest.fixture
def cb_intake(cast, receiver):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{echo: input}"})],
                             name="Echo")
    return intake_create(org=cast.org_a, workflow=workflow, name="Callback intake",
                         created_by=cast.admin_a, callback_url=receiver.url_for("/hook?token=s3"))
@pytest.fixture
def fake_server():
    from tests.fakeserver import FakeServer

    server = FakeServer().start()
    yield server
    server.stop()


# --- Real qcluster processes for end-to-end tests, stopped after the test ---------------
@pytest.fixture
def clusters():
    """Call it to start a `manage.py qcluster` (env overrides as kwargs); all are stopped."""
    from tests.processes import QCluster

    started: list[QCluster] = []

    def start(**env):
        cluster = QCluster(**env).start()
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


# --- Outbound: a record of every connect(), and a safety net that only loopback is reached ---
@pytest.fixture
def connections(monkeypatch):
    """Every connect() is recorded; a non-loopback one is refused before any packet leaves."""
    attempts: list = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise ConnectionRefusedError("test safety net: only loopback may be reached")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts
