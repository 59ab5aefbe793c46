"""The demo data `make run` seeds: idempotent, and it keeps its secrets under var/."""

import json
import secrets
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction

from apikeys.models import ApiKey
from apikeys.services import apikey_digest_matches, apikey_issue
from auxot.models import Membership, Organization
from intakes.callbacks import intake_signing_secret_rotate
from intakes.demo.steps import demo_http_url, demo_seed_step_examples
from intakes.lookup import intake_lookup
from intakes.models import Intake
from intakes.secrets import secret_decrypt
from intakes.services import intake_create
from workflows.models import Step, Workflow

SECRETS_FILE = settings.VAR_DIR / "demo-secrets.json"
# The demo's receivers run on this machine (callbacks, the http example's echo on the web
# process itself, a local model server): the demo's processes, and only they, allow http://
# callbacks and loopback destinations, and retry quickly.
DEMO_ENV = {
    "AUXOT_CALLBACK_ALLOW_HTTP": "1",
    "AUXOT_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
    "AUXOT_CALLER_CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",  # the README's receiver
    "AUXOT_CALLBACK_RETRY_SCHEDULE": "0,2,5,15,60",
}
GREETING = "{greeting: join(' ', ['Hello,', input.customer || 'world']), ticket: input.ticket_id}"


@dataclass
class Demo:
    org: Organization
    username: str
    password: str
    intake: Intake
    token: str
    signing_secret: str
    signing_secret_is_new: bool  # print it in full only when it was created or rotated
    # rotated in the admin since the last run: var/demo-secrets.json now has the current one
    signing_secret_changed_in_admin: bool = False
    examples: list = field(default_factory=list)  # one per step kind (intakes/demo/steps.py)
    http_url: str = ""  # where the http example posts
    key: ApiKey | None = None  # the key `token` is


def _load_secrets() -> dict:
    if SECRETS_FILE.exists():
        return json.loads(SECRETS_FILE.read_text())
    return {}


def _database_label() -> str:
    """Which database the demo runs on: `make run` on SQLite, then against PostgreSQL, then
    on SQLite again keeps each one's key (no password in it)."""
    db = connection.settings_dict
    return f"{connection.vendor}://{db.get('HOST') or ''}:{db.get('PORT') or ''}/{db['NAME']}"


def _save_secrets(data: dict) -> None:
    SECRETS_FILE.parent.mkdir(exist_ok=True)
    SECRETS_FILE.write_text(json.dumps(data, indent=2))
    SECRETS_FILE.chmod(0o600)


def _workflow(org: Organization) -> Workflow:
    workflow, created = Workflow.objects.get_or_create(
        org=org, slug="greet-and-wait",
        defaults={"name": "Greet and wait",
                  "description": "Builds a greeting from the input, then waits 3 s."},
    )
    if created:
        Step.objects.create(workflow=workflow, position=1, name="Build greeting",
                            kind="transform", config={"expression": GREETING})
        Step.objects.create(workflow=workflow, position=2, name="Wait a moment", kind="delay",
                            config={"seconds": 3})
    return workflow


def demo_seed(*, base_url: str = "http://127.0.0.1:8000") -> Demo:
    """Seed (or refresh) the demo; `base_url` is where its web process listens."""
    http_url = demo_http_url(base_url)
    stored = _load_secrets()
    User = get_user_model()
    with transaction.atomic():
        org, _ = Organization.objects.get_or_create(
            slug="demo", defaults={"name": "Demo Co", "plan": Organization.Plan.BUSINESS})
        user = User.objects.filter(username="admin").first()
        password = stored.get("password") or secrets.token_urlsafe(12)
        if user is None:
            user = User.objects.create_superuser("admin", "admin@example.com", password)
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        Membership.objects.get_or_create(user=user, org=org,
                                         defaults={"role": Membership.Role.ADMIN})
        workflow = _workflow(org)
        intake = Intake.objects.filter(org=org, name="Demo intake").first() or intake_create(
            org=org, workflow=workflow, name="Demo intake", created_by=user)
        # The key on file for this database; a file from before there was one per database
        # has a single "token" (checked against this database's key like any other).
        token = stored.get("tokens", {}).get(_database_label()) or stored.get("token", "")
        key = ApiKey.objects.filter(org=org, label="Demo key", revoked_at__isnull=True).first()
        if key is None or not apikey_digest_matches(key, token):
            issued = apikey_issue(org=org, label="Demo key", user=user, created_by=user)
            key, token = issued.key, issued.token
        signing_secret, new_secret, changed = _signing_secret(intake, stored, user)
        examples = demo_seed_step_examples(org=org, user=user, http_url=http_url)
    # Merged, not replaced: each database's key and each intake's secret stay on file (intake
    # ids are UUIDs, unique across databases; examples/receiver.py looks one up by id).
    _save_secrets({**stored, "password": password, "token": token,
                   "tokens": {**stored.get("tokens", {}), _database_label(): token},
                   "signing_secrets": {**stored.get("signing_secrets", {}),
                                       str(intake.pk): signing_secret}})
    return Demo(org=org, username="admin", password=password, intake=intake, token=token,
                signing_secret=signing_secret, signing_secret_is_new=new_secret,
                signing_secret_changed_in_admin=changed,
                examples=examples, http_url=http_url, key=key)


def demo_refusal(*, intake: Intake, key: ApiKey) -> str | None:
    """Why `key` gets 404 on `intake` (the API's own lookup decides), or None when it may
    call it. The seed keeps what an admin changed since the last run: a deactivated intake
    or workflow, or a team (as the README's GitHub Actions steps have one do)."""
    if intake_lookup(pk=intake.pk, key=key) is not None:
        return None
    intake = Intake.objects.select_related("workflow", "team").get(pk=intake.pk)
    where = f"/admin/ → Intakes → {intake.name}"
    if not intake.active:
        return f"it is deactivated: reactivate it ({where} → Reactivate)"
    if not intake.workflow.active:
        return (f"its workflow '{intake.workflow.name}' is deactivated: tick Active on it "
                "(/admin/ → Workflows)")
    if intake.team_id is not None:
        return (f"it belongs to team '{intake.team.name}', which {key.user} is not in: call "
                f"it with that team's key, or clear its Team ({where})")
    return "this key may not call it"


def _signing_secret(intake: Intake, stored: dict, user) -> tuple[str, bool, bool]:
    """(the intake's current secret, new: created or rotated now, changed in the admin).

    The one on file if it still matches. One rotated in the admin since is kept (not rotated
    over: the admin showed it, and its receivers may use it already) and goes on file for
    examples/receiver.py. Only with nothing on file (a new intake, a lost file) is there a
    new one to show."""
    if getattr(intake, "signing_secret", None):  # just created
        return intake.signing_secret, True, False
    known = stored.get("signing_secrets", {}).get(str(intake.pk), "")
    current = (secret_decrypt(intake.signing_secret_encrypted)
               if intake.signing_secret_encrypted else "")
    if known and current:
        return current, False, not secrets.compare_digest(known, current)
    return intake_signing_secret_rotate(intake=intake, actor=user), True, False
