"""`manage.py apikey_issue`: issue a personal or team key from a shell (ops, CI setup).

The token goes to stdout alone, once, so it can be piped straight into a secret store
(`... | gh secret set AUXOT_API_KEY`); everything else goes to stderr.
"""

import getpass
import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apikeys.services import apikey_issue
from auxot.errors import ApplicationError
from auxot.models import Organization, Team


def _actor() -> str:
    """Who issued it, for the audit row: the command and the account that ran it."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        who = f"uid {os.getuid()}"
    return f"manage.py apikey_issue ({who})"


class Command(BaseCommand):
    help = "Issue an API key: --team NAME for a team key (Business/Enterprise), or --user NAME."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--label", required=True)
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--team", help="team name: a team.… key")
        owner.add_argument("--user", help="username: a user.… key")

    def handle(self, *args, org: str, label: str, team: str | None, user: str | None, **opts):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        owner = {}
        if team:
            owner["team"] = Team.objects.filter(org=organization, name=team).first()
            if owner["team"] is None:
                raise CommandError(f"No team {team!r} in {organization.name}; create it in "
                                   "/admin/ → Teams first.")
        else:
            owner["user"] = get_user_model().objects.filter(username=user).first()
            if owner["user"] is None:
                raise CommandError(f"No user {user!r}.")
        try:
            issued = apikey_issue(org=organization, label=label, actor_label=_actor(), **owner)
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        self.stderr.write(f"Issued {issued.key.kind} key {label!r} (lookup id "
                          f"{issued.key.lookup_id}). It is shown once: store it now.")
        self.stdout.write(issued.token)
