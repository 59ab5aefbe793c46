"""Callbacks with real processes: a qcluster delivers, dies, and the next one finishes the job."""

import time

import pytest
import requests
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook

from apikeys.services import apikey_issue
from intakes.models import CallbackAttempt, CallbackDelivery
from intakes.services import intake_create
from tests.conftest import make_workflow
from tests.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CALLBACK_ENV = {
    "AUXOT_CALLBACK_ALLOW_HTTP": "1",
    "AUXOT_CALLBACK_RETRY_SCHEDULE": "0,3",
    "AUXOT_CALLBACK_JITTER": "0",
    "AUXOT_CALLBACK_TIMEOUT_SECONDS": "5",
}


def test_delivery_due_while_no_worker_runs_goes_out_after_restart(
        live_server, cast, receiver: HTTPServer, clusters):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "{echo: input}"})],
                             name="E2E callbacks")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="e2e-cb",
                           callback_url=receiver.url_for("/hook"))
    token = apikey_issue(org=cast.org_a, label="e2e", user=cast.member_a).token
    receiver.expect_oneshot_request("/hook").respond_with_data("down", status=503)
    receiver.expect_request("/hook").respond_with_data("ok")
    response = requests.post(f"{live_server.url}/v1/intake/{intake.pk}", json={"n": 7},
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 202
    first = clusters(**CALLBACK_ENV)
    delivery = wait_for(
        lambda: CallbackDelivery.objects.filter(attempts=1, state="pending").first(),
        timeout=30, interval=0.1, what="the first (failed) attempt")
    first.kill()  # the retry is due in 3 s, while no worker runs
    wait_for(lambda: len(receiver.log) == 1, timeout=5, what="exactly one request so far")
    time.sleep(3.5)  # let the retry come due while no worker runs
    assert len(receiver.log) == 1
    clusters(**CALLBACK_ENV)
    wait_for(lambda: CallbackDelivery.objects.filter(pk=delivery.pk, state="delivered").exists(),
             timeout=30, interval=0.1, what="delivery after restart")
    (one, _), (two, _) = receiver.log
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == delivery.webhook_id
    body = Webhook(intake.signing_secret).verify(two.get_data(), dict(two.headers))
    assert body["output"] == {"echo": {"n": 7}} and body["status"] == "completed"
    assert [a.status_code for a in CallbackAttempt.objects.filter(delivery=delivery)] == [503, 200]
