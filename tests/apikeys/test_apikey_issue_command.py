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


def test_the_audit_row_names_the_command_and_the_account_that_ran_it(cast):
    import getpass

    from auxot.models import AuditEvent

    call_command("apikey_issue", "--org", "org-a", "--user", "member_a", "--label", "laptop",
                 stdout=StringIO(), stderr=StringIO())
    row = AuditEvent.objects.get(event="apikey.issued",
                                 object_id=str(ApiKey.objects.get(label="laptop").pk))
    assert row.actor_label == f"manage.py apikey_issue ({getpass.getuser()})"
    assert row.org == cast.org_a and row.actor_user is None


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
