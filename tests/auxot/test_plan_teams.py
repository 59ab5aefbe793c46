"""The plan/team rule is written once, on Organization, and every place that checks it says
the same thing."""

import pytest

from apikeys.services import apikey_issue
from auxot.errors import ApplicationError
from auxot.models import Organization
from intakes.services import intake_create


@pytest.mark.parametrize("plan", ["business", "enterprise"])
def test_plans_with_teams_have_no_refusal(cast, plan):
    cast.org_a.plan = plan
    assert cast.org_a.teams_refusal() == ""


@pytest.mark.parametrize(("plan", "label"), [("free", "Free"), ("pro", "Pro")])
def test_plans_without_teams_are_refused_naming_the_current_plan(cast, plan, label):
    cast.org_a.plan = plan
    refusal = cast.org_a.teams_refusal()
    assert "available on the Business and Enterprise plans" in refusal
    assert f"on the {label} plan" in refusal


def test_key_issue_and_intake_team_assignment_give_the_same_refusal(cast, workflow_a):
    cast.org_a.plan = Organization.Plan.PRO
    cast.org_a.save(update_fields=["plan"])
    with pytest.raises(ApplicationError) as key_refused:
        apikey_issue(org=cast.org_a, label="T", team=cast.team_a, created_by=cast.admin_a)
    with pytest.raises(ApplicationError) as intake_refused:
        intake_create(org=cast.org_a, workflow=workflow_a, name="T", team=cast.team_a,
                      created_by=cast.admin_a)
    assert key_refused.value.detail == intake_refused.value.detail == cast.org_a.teams_refusal()
    assert key_refused.value.code == intake_refused.value.code == "forbidden"
