"""A client generated from /v1/schema by openapi-python-client drives the whole API.

Nothing generated is committed: the test downloads the schema from a live server, generates
the client into a temporary folder (offline), imports it and uses only what it generated.
"""

import importlib
import json
import subprocess
import sys
import uuid
from http import HTTPStatus

import pytest
import requests

from apikeys.services import apikey_issue
from intakes.models import Intake
from intakes.services import intake_create
from tests.callers import BIN
from tests.conftest import GREETING, make_workflow
from tests.processes import ROOT, QCluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PACKAGE = "auxot_generated_client"
CALLBACK_ENV = {"AUXOT_CALLBACK_ALLOW_HTTP": "1",
                "AUXOT_CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32"}


@pytest.fixture
def generated(live_server, tmp_path):
    """The generated package, imported from tmp_path; forgotten afterwards."""
    schema = requests.get(f"{live_server.url}/v1/schema", params={"format": "json"}, timeout=30)
    assert schema.status_code == 200
    (tmp_path / "schema.json").write_text(json.dumps(schema.json()))
    refused = tmp_path / "refused.log"
    # Offline: the generator runs with loopback only (see tests/loopback_only).
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT / "tests" / "loopback_only"), "LOOPBACK_ONLY_LOG": str(refused)}
    result = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", "schema.json", "--meta",
         "none", "--output-path", PACKAGE, "--fail-on-warning"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not refused.exists(), refused.read_text()
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.split(".")[0] == PACKAGE]:
            del sys.modules[name]


@pytest.fixture
def worker():
    cluster = QCluster(**CALLBACK_ENV).start()
    yield cluster
    cluster.stop()


def _intake(cast, name, steps, **fields) -> uuid.UUID:
    intake = intake_create(org=cast.org_a, workflow=make_workflow(cast.org_a, steps, name=name),
                           name=name)
    if fields:
        Intake.objects.filter(pk=intake.pk).update(**fields)
    return intake.pk


class Api:
    """The generated operations, bound to one client: the test reads like a caller's code."""

    def __init__(self, package, base_url: str, token: str):
        self.ops = {name: importlib.import_module(f"{package.__name__}.api.{tag}.{name}")
                    for tag, name in [("intakes", "intake_trigger"),
                                      ("work_items", "work_item_get"),
                                      ("work_items", "work_item_approval"),
                                      ("work_items", "work_item_cancel")]}
        self.models = importlib.import_module(f"{package.__name__}.models")
        self.client = package.AuthenticatedClient(base_url=base_url, token=token,
                                                  raise_on_unexpected_status=True)

    def __getattr__(self, name):
        return lambda **kw: self.ops[name].sync_detailed(client=self.client, **kw)

    def until(self, intake_id, work_id, done) -> object:
        def check():
            item = self.work_item_get(intake_id=intake_id, work_id=work_id, wait=5.0).parsed
            return item if done(item) else None
        return wait_for(check, timeout=60, interval=0, what="the work item")


def _problem(response, status: int, code: str) -> None:
    assert response.status_code == HTTPStatus(status), response.content
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.parsed
    assert (problem.status, problem.code.value, problem.type_) == (
        status, code, f"/v1/problems/{code}")


def _terminal(item) -> bool:
    return item.status.value in ("completed", "failed")


def _trigger_poll_and_callback(api: Api, ok, receiver) -> uuid.UUID:
    """Trigger with every header, replay it, poll and long-poll to the end, get the callback."""
    hook = receiver.url_for("/hook")
    headers = {"idempotency_key": "deploy-4711", "auxot_correlation_id": "ci-1",
               "auxot_callback_url": hook}
    accepted = api.intake_trigger(intake_id=ok, body={"customer": "Acme"}, **headers)
    assert accepted.status_code == HTTPStatus.ACCEPTED
    work_id = accepted.parsed.work_id
    assert accepted.headers["location"] == accepted.parsed.status_url
    replay = api.intake_trigger(intake_id=ok, body={"customer": "Acme"}, **headers)
    assert (replay.parsed.work_id, replay.headers["idempotent-replayed"]) == (work_id, "true")
    polled = api.work_item_get(intake_id=ok, work_id=work_id)
    assert polled.status_code == HTTPStatus.OK and polled.parsed.work_id == work_id
    done = api.until(ok, work_id, _terminal)
    assert (done.status.value, done.correlation_id) == ("completed", "ci-1")
    assert done.output["greeting"] == "Hello, Acme"
    assert [s.status.value for s in done.steps] == ["completed", "completed"]
    wait_for(lambda: receiver.log, timeout=30, what="the callback")
    assert json.loads(receiver.log[0][0].data)["work_id"] == str(work_id)
    return work_id


def _approve_and_reject(api: Api, gated) -> None:
    for decision, status in (("approve", "completed"), ("reject", "failed")):
        item_id = api.intake_trigger(intake_id=gated, body={}).parsed.work_id
        api.until(gated, item_id, lambda item: (item.waiting_on or {}).get("kind") == "approval")
        body = api.models.ApprovalRequest(decision=api.models.DecisionEnum(decision),
                                          comment=f"{decision}d by a generated client")
        decided = api.work_item_approval(intake_id=gated, work_id=item_id, body=body)
        assert decided.status_code == HTTPStatus.OK, decided.content
        finished = api.until(gated, item_id, _terminal)
        assert finished.status.value == status
    assert finished.error.code == "rejected"
    _problem(api.work_item_approval(intake_id=gated, work_id=item_id, body=body), 409,
             "conflict")


def _cancel(api: Api, slow) -> None:
    """With a reason, and without a body; a finished item is 409."""
    first, second = (api.intake_trigger(intake_id=slow, body={}).parsed.work_id
                     for _ in range(2))
    canceled = api.work_item_cancel(intake_id=slow, work_id=first,
                                    body=api.models.CancelRequest(reason="duplicate"))
    assert (canceled.parsed.status.value, canceled.parsed.error.code) == ("failed", "canceled")
    assert "duplicate" in canceled.parsed.error.message
    assert api.work_item_cancel(intake_id=slow, work_id=second).parsed.status.value == "failed"
    _problem(api.work_item_cancel(intake_id=slow, work_id=first), 409, "conflict")


def _typed_problems(api: Api, stranger: Api, ok, limited, work_id) -> None:
    _problem(api.work_item_get(intake_id=ok, work_id=work_id, wait=999.0), 400,
             "invalid_request")
    unauthorized = stranger.work_item_get(intake_id=ok, work_id=work_id)
    _problem(unauthorized, 401, "unauthorized")
    assert unauthorized.headers["www-authenticate"].startswith("Bearer")
    _problem(api.work_item_get(intake_id=ok, work_id=uuid.uuid4()), 404, "not_found")
    _problem(api.intake_trigger(intake_id=uuid.uuid4(), body={}), 404, "not_found")
    _problem(api.intake_trigger(intake_id=ok, body={"customer": "Other"},
                                idempotency_key="deploy-4711"), 422, "idempotency_key_reused")
    _problem(api.intake_trigger(intake_id=ok, body={}, auxot_callback_url="http://10.1.2.3/"),
             422, "validation_failed")
    assert api.intake_trigger(intake_id=limited, body=[1, 2]).status_code == HTTPStatus.ACCEPTED
    limited_out = api.intake_trigger(intake_id=limited, body="any JSON value")
    _problem(limited_out, 429, "rate_limited")
    assert int(limited_out.headers["retry-after"]) > 0


def test_generated_client_drives_the_whole_api(generated, live_server, cast, worker, receiver,
                                               one_rate_limit_window):
    receiver.expect_request("/hook").respond_with_data("ok")
    ok = _intake(cast, "Greet", [("transform", {"expression": GREETING}),
                                 ("delay", {"seconds": 1})])
    gated = _intake(cast, "Gated", [("approval", {"instructions": "Sure?"}),
                                    ("transform", {"expression": "previous.decision"})])
    slow = _intake(cast, "Slow", [("delay", {"seconds": 600})])
    limited = _intake(cast, "Limited", [("transform", {"expression": "input"})],
                      rate_limit_per_window=1)
    token = apikey_issue(org=cast.org_a, label="generated", user=cast.member_a).token
    api = Api(generated, live_server.url, token)
    work_id = _trigger_poll_and_callback(api, ok, receiver)
    _approve_and_reject(api, gated)
    _cancel(api, slow)
    stranger = Api(generated, live_server.url, "user.aaaaaaaaaaaa." + "A" * 49)
    _typed_problems(api, stranger, ok, limited, work_id)
