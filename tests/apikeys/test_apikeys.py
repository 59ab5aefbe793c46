import pytest

from apikeys.models import ApiKey
from apikeys.services import apikey_issue, apikey_revoke
from apikeys.tokens import token_parse
from auxot.errors import ApplicationError
from auxot.models import AuditEvent, Organization, Team


def test_token_has_prefix_and_only_digest_is_stored(cast):
    issued = apikey_issue(org=cast.org_a, label="ci", user=cast.member_a)
    assert issued.token.startswith("user.")
    key = ApiKey.objects.get(pk=issued.key.pk)
    stored = " ".join(str(getattr(key, f.attname)) for f in ApiKey._meta.fields)
    secret = issued.token.split(".")[2]
    assert secret not in stored
    assert key.last_four == issued.token[-4:]
    assert token_parse(issued.token).lookup_id == key.lookup_id


def test_secret_has_at_least_256_bits(cast):
    token = apikey_issue(org=cast.org_a, label="ci", user=cast.member_a).token
    secret = token.split(".")[2][:43]
    assert len(secret) * 6 >= 256


def test_team_key_refused_below_business_plan(db):
    org = Organization.objects.create(name="Small", slug="small", plan="pro")
    team = Team.objects.create(org=org, name="t")
    with pytest.raises(ApplicationError, match="Business and Enterprise"):
        apikey_issue(org=org, label="x", team=team)
    assert not ApiKey.objects.exists()


def test_team_key_starts_with_team(cast):
    assert apikey_issue(org=cast.org_a, label="x", team=cast.team_a).token.startswith("team.")


def test_personal_key_needs_membership(cast):
    with pytest.raises(ApplicationError):
        apikey_issue(org=cast.org_a, label="x", user=cast.outsider_b)


def test_issue_and_revoke_are_audited_without_secret(cast):
    issued = apikey_issue(org=cast.org_a, label="ci", user=cast.member_a, created_by=cast.admin_a)
    apikey_revoke(key=issued.key, revoked_by=cast.admin_a)
    apikey_revoke(key=issued.key, revoked_by=cast.admin_a)  # final: no second event
    events = list(AuditEvent.objects.values_list("event", "extra"))
    assert [e for e, _ in events].count("apikey.revoked") == 1
    assert "apikey.issued" in [e for e, _ in events]
    assert issued.token not in str(events)
