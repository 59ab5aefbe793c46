"""`manage.py apikey_issue`: the shell path to a team key for CI."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apikeys.models import ApiKey
from apikeys.tokens import token_parse


def test_issues_a_team_key_printed_once_on_stdout(cast):
    out, err = StringIO(), StringIO()
    call_command("apikey_issue", "--org", "org-a", "--team", "Platform", "--label", "CI",
                 stdout=out, stderr=err)
    token = out.getvalue().strip()
    assert token_parse(token).kind == "team"
    key = ApiKey.objects.get(label="CI")
    assert key.team == cast.team_a and key.kind == "team"
    assert token not in err.getvalue()


def test_team_key_on_a_free_plan_is_refused_clearly(cast):
    cast.org_a.plan = "free"
    cast.org_a.save()
    with pytest.raises(CommandError, match="Business and Enterprise"):
        call_command("apikey_issue", "--org", "org-a", "--team", "Platform", "--label", "CI",
                     stdout=StringIO(), stderr=StringIO())
    assert not ApiKey.objects.exists()


def test_unknown_team_or_org_is_an_error(cast):
    with pytest.raises(CommandError, match="No team"):
        call_command("apikey_issue", "--org", "org-a", "--team", "Nope", "--label", "CI")
    with pytest.raises(CommandError, match="No organization"):
        call_command("apikey_issue", "--org", "nope", "--user", "admin_a", "--label", "x")
