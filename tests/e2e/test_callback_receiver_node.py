"""examples/node/receiver.mjs as a real Node.js process, verifying real deliveries with the
Standard Webhooks JavaScript library (pinned in examples/node/package-lock.json): proves a
Node receiver can trust Auxot's signatures as written in the README, rotations and
non-ASCII bodies included, and that it answers bad requests without crashing."""

import os
import shutil
import socket
import subprocess
import time

import pytest
import requests

from intakes.callbacks import (
    callback_delivery_create,
    callback_delivery_process,
    callback_delivery_redeliver,
    intake_signing_secret_rotate,
)
from intakes.services import intake_create, intake_update
from tests.callback_helpers import finished_item
from tests.conftest import make_workflow
from tests.processes import ROOT, free_port, wait_for
from tests.tools import require_tool

pytestmark = pytest.mark.django_db
EXAMPLE = ROOT / "examples" / "node"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="session")
def node_receiver_dir(tmp_path_factory):
    """The example copied out of the tree with its pinned dependencies installed (`npm ci`,
    as its header says): the checkout stays clean."""
    require_tool("node")
    npm = require_tool("npm")
    where = tmp_path_factory.mktemp("node-receiver")
    for name in ("receiver.mjs", "package.json", "package-lock.json"):
        shutil.copy(EXAMPLE / name, where / name)
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=where,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return where


@pytest.fixture
def start_receiver(node_receiver_dir):
    started = []

    def start(secret: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {**os.environ, "AUXOT_CALLBACK_SECRET": secret}
        proc = subprocess.Popen(["node", "receiver.mjs", "--port", str(port)],
                                cwd=node_receiver_dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        started.append(proc)

        def up():
            try:
                return requests.post(f"http://127.0.0.1:{port}/hook",
                                     timeout=1).status_code == 400
            except requests.ConnectionError:
                assert proc.poll() is None, proc.communicate()[0]
                return False

        wait_for(up, timeout=15, what="examples/node/receiver.mjs to listen")
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    output = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, output  # SIGTERM closes the server cleanly
    return output


def _intake(cast, name: str):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name=name)
    return intake_create(org=cast.org_a, workflow=workflow, name=name)


def _point(intake, port: int) -> None:
    intake_update(intake=intake, changes={"callback_url": f"http://127.0.0.1:{port}/hook"})


def test_node_receiver_verifies_dedupes_and_prints(cast, start_receiver):
    intake = _intake(cast, "to node")
    proc, port = start_receiver(intake.signing_secret)
    _point(intake, port)
    item = finished_item(intake)
    delivery = callback_delivery_create(work_item=item)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    callback_delivery_redeliver(delivery=delivery)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    output = _stop(proc)
    assert f"verified {delivery.webhook_id}: work {item.pk} is completed" in output
    assert f"duplicate {delivery.webhook_id}: already handled" in output
    assert "REJECTED: Missing required headers" in output  # the fixture's unsigned probe


def test_node_receiver_verifies_a_non_ascii_body(cast, start_receiver):
    """The library verifies the body as a UTF-8 string: Auxot must sign exactly the bytes
    it sends, whatever the payload's script."""
    intake = _intake(cast, "to node, unicode")
    proc, port = start_receiver(intake.signing_secret)
    _point(intake, port)
    item = finished_item(intake, input={"city": "Zürich", "note": "naïve ✓ 東京 🚀"})
    delivery = callback_delivery_create(work_item=item)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    output = _stop(proc)
    assert f"verified {delivery.webhook_id}: work {item.pk} is completed" in output
    assert '"note": "naïve ✓ 東京 🚀"' in output


def test_node_receivers_on_the_old_and_the_new_secret_both_verify_during_a_rotation(
        cast, start_receiver):
    """After a rotation a delivery carries two signatures (README: space-separated, one per
    active secret); the JavaScript library must accept it with either secret, so a fleet of
    receivers can switch without a gap."""
    intake = _intake(cast, "to node, rotating")
    old = intake.signing_secret
    new = intake_signing_secret_rotate(intake=intake)
    assert new != old
    old_proc, old_port = start_receiver(old)
    new_proc, new_port = start_receiver(new)
    for port in (old_port, new_port):
        _point(intake, port)
        item = finished_item(intake)
        delivery = callback_delivery_create(work_item=item)
        assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    assert "verified msg_" in _stop(old_proc)
    assert "verified msg_" in _stop(new_proc)


@pytest.mark.parametrize(("signature", "body"), [
    ("garbage", b"{}"), ("v1,a", b"{}"), ("v1,a,b", b"{}"), ("v1,AAAA", b"\xff\xfe{}"),
    ("", b"{}")])
def test_node_receiver_answers_a_bad_signature_with_a_400_and_keeps_serving(
        start_receiver, signature, body):
    proc, port = start_receiver("whsec_" + "A" * 43 + "=")
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
               "webhook-signature": signature, "content-type": "application/json"}
    hook = f"http://127.0.0.1:{port}/hook"
    assert requests.post(hook, data=body, headers=headers, timeout=5).status_code == 400
    assert requests.post(hook, data=b"{}", timeout=5).status_code == 400  # still serving
    assert "REJECTED" in _stop(proc)


def test_node_receiver_refuses_what_it_cannot_bound(start_receiver):
    proc, port = start_receiver("whsec_" + "A" * 43 + "=")
    hook = f"http://127.0.0.1:{port}/hook"
    assert requests.get(hook, timeout=5).status_code == 405
    too_big = {"Content-Length": str(16 * 1024 * 1024 + 1)}
    assert requests.post(hook, headers=too_big, data=b"", timeout=5).status_code == 413
    chunked = requests.post(hook, data=iter([b"{}"]), timeout=5)  # no Content-Length
    assert chunked.status_code == 411
    _stop(proc)


def test_node_receiver_refuses_to_start_without_a_secret(node_receiver_dir):
    env = {k: v for k, v in os.environ.items() if k != "AUXOT_CALLBACK_SECRET"}
    done = subprocess.run(["node", "receiver.mjs"], cwd=node_receiver_dir, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "AUXOT_CALLBACK_SECRET" in done.stderr


def test_a_busy_port_says_so_in_one_line(node_receiver_dir):
    """Another receiver (or anything) on the port: one line naming it and --port, exit 1,
    not Node's unhandled 'error' event and its stack trace."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(["node", "receiver.mjs", "--port", str(port)],
                              cwd=node_receiver_dir, capture_output=True, text=True,
                              env={**os.environ, "AUXOT_CALLBACK_SECRET": SECRET},
                              timeout=30, check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"Port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "--port" in done.stderr
