"""`auxot replay` and `Client.replay` against a live server and a real qcluster."""

import json

import pytest

from auxot.models import AuditEvent
from auxot_client import cli
from tests.callers import BIN, caller, worker  # noqa: F401  (fixtures)
from workflows.models import Step, WorkItem

AUXOT = str(BIN / "auxot")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_replay_waits_like_run_and_exits_like_it(caller, worker):  # noqa: F811
    failing = caller.failing_intake_id
    first = caller.run([AUXOT, "run", failing, "--data", '{"n": 5}'])
    assert first.returncode == 1
    work_id = first.stderr.decode().split("work_id ")[1].split()[0]

    again = caller.run([AUXOT, "replay", work_id, "--intake", failing, "--wait"])
    assert again.returncode == 1, again.stderr  # still broken: the replay fails too
    assert f"replay of {work_id}" in again.stderr.decode()

    Step.objects.filter(workflow__intakes__pk=failing).update(config={"expression": "input"})
    status_url = f"{caller.base_url}/v1/intake/{failing}/work/{work_id}"
    # The original was replayed once already: the 409 names the replay to take forward.
    twice = caller.run([AUXOT, "replay", status_url, "--from", "start", "--wait"])
    replay = WorkItem.objects.get(replay_of_id=work_id)
    assert twice.returncode == 3 and str(replay.pk).encode() in twice.stderr
    healed = caller.run([AUXOT, "replay", status_url.replace(work_id, str(replay.pk)),
                         "--from", "start", "--wait"])
    assert healed.returncode == 0, healed.stderr
    assert json.loads(healed.stdout) == {"n": 5}
    new = WorkItem.objects.get(replay_of_id=replay.pk, status="completed")
    assert new.resumed_from_step == 1

    done = caller.run([AUXOT, "replay", str(new.pk), "--intake", failing])
    assert done.returncode == 3  # only failed items replay: a 409 is a refused request
    assert b"Only failed work items can be replayed" in done.stderr
    assert caller.token[20:] not in (done.stdout + done.stderr).decode()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_replay_without_wait_prints_the_new_work_id(caller, worker):  # noqa: F811
    first = caller.run([AUXOT, "run", caller.failing_intake_id, "--data", "{}"])
    work_id = first.stderr.decode().split("work_id ")[1].split()[0]
    result = caller.run([AUXOT, "replay", work_id, "--reason", "expression fixed"],
                        AUXOT_INTAKE_ID=caller.failing_intake_id)
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.decode().strip()
    assert WorkItem.objects.get(pk=new_id).replay_of_id is not None
    event = AuditEvent.objects.get(event="work_item.replayed", object_id=work_id)
    assert event.extra["reason"] == "expression fixed"


def test_replay_needs_an_intake(monkeypatch, capsys):
    monkeypatch.delenv("AUXOT_INTAKE_ID", raising=False)
    monkeypatch.setenv("AUXOT_BASE_URL", "http://127.0.0.1:9")
    assert cli.main(["replay", "0f0f0f0f-0000-0000-0000-000000000000"]) == cli.EXIT_USAGE
    assert "--intake" in capsys.readouterr().err
