"""A second `make run` after the admin changed the demo's intakes: every curl it prints either
works with the key it prints, or a line under it says why it will answer 404.

The seed keeps what an admin chose (the README's GitHub Actions steps give the demo intake a
team; the admin tour deactivates intakes), so the same curl can stop working; it printed
"ready" and the curl all the same, and the newcomer met a bare 404."""

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from auxot.models import Team
from intakes.models import Intake
from workflows.models import Workflow

PRINTED_CURL = re.compile(r"curl (?:-i )?-X POST \"?http://127\.0\.0\.1:8765/v1/intake/([0-9a-f-]{36})")
WARNING = re.compile(r"! 404 for this key on intake ([0-9a-f-]{36}): (.+)\.$", re.M)


@pytest.fixture
def demo_env(monkeypatch, tmp_path):
    monkeypatch.setattr("intakes.demo.seed.SECRETS_FILE", tmp_path / "demo-secrets.json")
    for name in ("AUXOT_DEMO_AGENT_BASE_URL", "AUXOT_DEMO_AGENT_MODEL", "AUXOT_DEMO_HTTP_URL"):
        monkeypatch.delenv(name, raising=False)


def _run_demo() -> str:
    out = StringIO()
    call_command("demo", "--no-serve", "--port", "8765", stdout=out)
    return out.getvalue()


def _token(printed: str) -> str:
    return re.search(r"API key:\s+(\S+)", printed).group(1)


def _status(intake_id: str, token: str) -> int:
    return Client().post(f"/v1/intake/{intake_id}", data="{}", content_type="application/json",
                         HTTP_AUTHORIZATION=f"Bearer {token}").status_code


def _deactivate(intake: Intake) -> None:
    Intake.objects.filter(pk=intake.pk).update(active=False)


def _deactivate_workflow(intake: Intake) -> None:
    Workflow.objects.filter(pk=intake.workflow_id).update(active=False)


def _give_a_team(intake: Intake) -> None:
    team, _ = Team.objects.get_or_create(org=intake.org, name="CI")
    Intake.objects.filter(pk=intake.pk).update(team=team)


CHANGES = {"intake deactivated": (_deactivate, "deactivated: reactivate it"),
           "workflow deactivated": (_deactivate_workflow, "is deactivated: tick Active"),
           "team assigned": (_give_a_team, "belongs to team 'CI', which admin is not in")}


def test_an_untouched_demo_prints_no_warning_and_every_curl_works(db, demo_env):
    printed = _run_demo()
    printed = _run_demo()  # the second run, on the first one's state
    ids = PRINTED_CURL.findall(printed)
    assert len(set(ids)) >= 5, printed  # the demo intake and the examples
    assert not WARNING.search(printed), printed
    assert {_status(pk, _token(printed)) for pk in ids} == {202}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_printed_curl_that_would_404_says_why(db, demo_env, change):
    apply, reason = CHANGES[change]
    ids = set(PRINTED_CURL.findall(_run_demo()))
    warned_somewhere = False
    for pk in sorted(ids):
        before = {i.pk: (i.active, i.team_id) for i in Intake.objects.all()}
        workflows = {w.pk: w.active for w in Workflow.objects.all()}
        apply(Intake.objects.get(pk=pk))
        printed = _run_demo()
        warnings = dict(WARNING.findall(printed))
        refused = _status(pk, _token(printed)) == 404
        assert (pk in warnings) == refused, (change, pk, printed)
        if refused:
            assert reason in warnings[pk], warnings[pk]
            warned_somewhere = True
        assert set(warnings) <= {pk}, warnings  # only the intake that was changed
        for intake_pk, (active, team_id) in before.items():  # undo, for the next one
            Intake.objects.filter(pk=intake_pk).update(active=active, team_id=team_id)
        for workflow_pk, active in workflows.items():
            Workflow.objects.filter(pk=workflow_pk).update(active=active)
    # The demo intake keeps what the admin chose, so at least that curl must warn.
    assert warned_somewhere


def test_every_heading_of_the_printout_follows_a_blank_line(db, demo_env):
    """"One example workflow per step kind (same key):" ran on from the "API docs:" line."""
    lines = _run_demo().splitlines()
    headings = [n for n, line in enumerate(lines) if re.match(r"\S.*:$", line)]
    assert len(headings) >= 4, lines  # Trigger, Poll, Callbacks, the examples
    assert [lines[n] for n in headings if n and lines[n - 1].strip()] == []
