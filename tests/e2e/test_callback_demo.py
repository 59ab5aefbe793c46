"""The demo's callback pieces: the secret on file, and examples/receiver.py as a real process."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from intakes.callbacks import (
    callback_delivery_create,
    callback_delivery_process,
    callback_delivery_redeliver,
)
from intakes.demo import seed as demo
from intakes.services import intake_create
from tests.callback_helpers import finished_item
from tests.conftest import make_workflow
from tests.processes import ROOT, wait_for

pytestmark = pytest.mark.django_db
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_demo_keeps_the_signing_secret_and_prints_it_only_when_new(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SECRETS_FILE", tmp_path / "demo-secrets.json")
    first = demo.demo_seed()
    assert first.signing_secret.startswith("whsec_") and first.signing_secret_is_new
    stored = json.loads((tmp_path / "demo-secrets.json").read_text())
    assert stored["signing_secrets"] == {str(first.intake.pk): first.signing_secret}
    again = demo.demo_seed()
    assert again.signing_secret == first.signing_secret and not again.signing_secret_is_new
    (tmp_path / "demo-secrets.json").write_text(json.dumps({**stored, "signing_secrets": {}}))
    lost = demo.demo_seed()  # file lost: a fresh secret, shown again
    assert lost.signing_secret_is_new and lost.signing_secret != first.signing_secret


def test_demo_keeps_a_secret_rotated_in_the_admin_and_does_not_rotate_over_it(tmp_path,
                                                                            monkeypatch):
    from auxot.models import AuditEvent
    from intakes.callbacks import intake_signing_secret_rotate

    monkeypatch.setattr(demo, "SECRETS_FILE", tmp_path / "demo-secrets.json")
    first = demo.demo_seed()
    rotated = intake_signing_secret_rotate(intake=first.intake)  # the admin's action
    rotations = AuditEvent.objects.filter(event="intake.signing_secret_rotated").count()
    again = demo.demo_seed()
    assert again.signing_secret == rotated and again.signing_secret_changed_in_admin
    assert not again.signing_secret_is_new
    assert AuditEvent.objects.filter(event="intake.signing_secret_rotated").count() == rotations
    stored = json.loads((tmp_path / "demo-secrets.json").read_text())
    assert stored["signing_secrets"] == {str(first.intake.pk): rotated}  # for the receiver
    third = demo.demo_seed()
    assert third.signing_secret == rotated and not third.signing_secret_changed_in_admin


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def example_receiver(cast):
    port = _free_port()
    workflow = make_workflow(cast.org_a, [("transform", {"expression": "input"})], name="Ex")
    intake = intake_create(org=cast.org_a, workflow=workflow, name="to example",
                           callback_url=f"http://127.0.0.1:{port}/hook")
    # The secret as the README and `auxot verify-callback` name it, not on the command line.
    env = {**os.environ, "AUXOT_CALLBACK_SECRET": intake.signing_secret}
    env.pop("AUXOT_WEBHOOK_SECRET", None)
    proc = subprocess.Popen([sys.executable, "examples/receiver.py", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def up():
        try:
            return requests.post(f"http://127.0.0.1:{port}/hook", timeout=1).status_code == 400
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=15, what="examples/receiver.py to listen")
    yield intake, proc
    proc.terminate()
    proc.wait(10)


def test_example_receiver_verifies_dedupes_and_prints(example_receiver):
    intake, proc = example_receiver
    item = finished_item(intake)
    delivery = callback_delivery_create(work_item=item)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    callback_delivery_redeliver(delivery=delivery)
    assert callback_delivery_process(delivery_id=delivery.pk) == "delivered"
    proc.terminate()
    output = proc.communicate(timeout=10)[0]
    assert f"verified {delivery.webhook_id}: work {item.pk} is completed" in output
    assert f"duplicate {delivery.webhook_id}" in output
    assert "REJECTED" in output  # the unsigned probe of the fixture


@pytest.mark.parametrize(("signature", "body"), [
    ("garbage", b"{}"), ("v1,a", b"{}"), ("v1,a,b", b"{}"), ("v1,AAAA", b"\xff\xfe{}")])
def test_example_receiver_answers_a_malformed_signature_with_a_400(example_receiver,
                                                                   signature, body):
    """The library raises ValueError (not its own error) for these: the receiver dropped
    the connection with a traceback instead of answering."""
    _intake, proc = example_receiver
    port = proc.args[proc.args.index("--port") + 1]
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
               "webhook-signature": signature, "content-type": "application/json"}
    answer = requests.post(f"http://127.0.0.1:{port}/hook", data=body, headers=headers,
                           timeout=5)
    assert answer.status_code == 400
    proc.terminate()
    assert "Traceback" not in proc.communicate(timeout=10)[0]


def test_example_receiver_on_a_busy_port_says_so_in_one_line():
    """Another receiver (or anything) on the port: one line naming it and --port, exit 1,
    not an OSError traceback (test_callback_receiver_node.py holds the Node one to this)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "examples/receiver.py", "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "AUXOT_CALLBACK_SECRET": SECRET},
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"Port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "--port" in done.stderr


def test_the_receiver_before_any_make_run_says_what_to_do(tmp_path, monkeypatch):
    """--demo-intake before `make run` had written var/demo-secrets.json: a traceback
    (FileNotFoundError) instead of a line saying to start the demo first."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_receiver",
                                                  ROOT / "examples" / "receiver.py")
    receiver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(receiver)
    monkeypatch.setattr(receiver, "DEMO_SECRETS", tmp_path / "demo-secrets.json")
    monkeypatch.setattr(sys, "argv", ["receiver.py", "--port", "9000", "--demo-intake", "x"])
    with pytest.raises(SystemExit) as stopped:
        receiver.main()
    assert "make run" in str(stopped.value.code) and "--secret" in str(stopped.value.code)
