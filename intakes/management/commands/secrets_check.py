"""`manage.py secrets_check`: every step and provider secret reference that would not resolve,
and every credential typed into a step, a JSON Schema or a provider's base URL instead of a
secret (by its name in an `http` step's headers, or by its format in any string of any step's
config and of a workflow's or step's schema: auxot/credentials.py `credential_formats`).

It also lists a credential found by its format in a name, label, description or host list
saved before the admin refused one there (FREE_TEXT below): those are shown to every viewer.

It lives in the top app because it reads every app's tables. A line is printed with any
credential in it REDACTED (a name or a reference it quotes may hold one), so none carries one.

Run it after upgrading (and after changing AUXOT_OPERATOR_SECRETS), on a worker host: an
operator-granted variable must be set in the environment it runs in. Exit status 1 when
anything is listed. A typed credential (saved before such values were refused) still runs,
but everyone who may view the workflow or provider reads it in the admin: it is listed so it
can be moved into a secret (saving the step or provider as it is is refused). Values are
never printed; only a `url_secret`'s is read (decrypted, with
the server's SECRET_KEY), to check it is an http(s) URL on a host the secret allows.
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from apikeys.models import ApiKey
from auxot.credentials import credential_formats_redacted, free_text_refusal
from auxot.models import Secret, Team
from auxot.secrets import SecretUnavailable, reference_problem, url_reference_resolve
from intakes.models import Intake
from workflows.handoffs import schema_credentials_check
from workflows.kinds import UnknownKind, kind_get
from workflows.kinds.http import Http
from workflows.models import Provider, Step, Workflow

# The free text an admin form refuses a credential in (auxot/admin_base.py,
# CredentialFreeFormMixin), as stored: (model label, form field) -> (model, its attribute,
# the path to the organization). tests/admin/test_free_text_credentials.py keeps it to the
# forms' own list.
FREE_TEXT = {
    ("auxot.Team", "name"): (Team, "name", "org"),
    ("auxot.Secret", "name"): (Secret, "name", "org"),
    ("auxot.Secret", "hosts"): (Secret, "allowed_hosts", "org"),
    ("apikeys.ApiKey", "label"): (ApiKey, "label", "org"),
    ("workflows.Workflow", "name"): (Workflow, "name", "org"),
    ("workflows.Workflow", "slug"): (Workflow, "slug", "org"),
    ("workflows.Workflow", "description"): (Workflow, "description", "org"),
    ("workflows.Step", "name"): (Step, "name", "workflow__org"),
    ("workflows.Provider", "name"): (Provider, "name", "org"),
    ("workflows.Provider", "model"): (Provider, "model", "org"),
    ("workflows.Provider", "api_key_secret"): (Provider, "api_key_secret", "org"),
    ("workflows.Provider", "api_key_env"): (Provider, "api_key_env", "org"),
    ("intakes.Intake", "name"): (Intake, "name", "org"),
    ("intakes.Intake", "redact_paths"): (Intake, "redact_paths", "org"),
}


def free_text_problems():
    """A credential in a name, label, description or host list saved before it was refused:
    the row by its id, the field and the credential's kind, never the value."""
    for (label, field), (model, attribute, org_path) in FREE_TEXT.items():
        rows = model.objects.order_by("pk").values_list(f"{org_path}__slug", "pk", attribute)
        for org_slug, pk, value in rows.iterator(chunk_size=500):
            if problem := free_text_refusal(value, field):
                yield f"org {org_slug}  {label} {pk}  {problem.split('. ')[0]}"


def workflow_problems():
    """A credential typed into a workflow's input schema."""
    workflows = Workflow.objects.select_related("org").order_by("org__slug", "slug")
    for workflow in workflows.iterator(chunk_size=500):
        if problem := _schema_problem(workflow.input_schema, "input_schema"):
            yield f"org {workflow.org.slug}  workflow {workflow.slug}  {problem}"


def step_problems():
    steps = Step.objects.select_related("workflow__org").order_by(
        "workflow__org__slug", "workflow__slug", "position")
    for step in steps.iterator(chunk_size=500):
        config = step.config if isinstance(step.config, dict) else {}
        where = (f"org {step.workflow.org.slug}  workflow {step.workflow.slug}  "
                 f"step {step.position} {step.name!r}")
        if step.kind == Http.name:
            yield from _reference_problems(step, config, where)
        if problem := _typed_problem(step.kind, config):
            yield f"{where}  {problem}"
        if problem := _schema_problem(step.output_schema, "output_schema"):
            yield f"{where}  {problem}"


def _reference_problems(step, config: dict, where: str):
    refs = config.get("secret_headers") or {}
    if not isinstance(refs, dict):
        refs = {"(secret_headers)": refs}
    url = config.get("url") if isinstance(config.get("url"), str) else None
    if "url_secret" in config:
        problem = reference_problem(org_id=step.workflow.org_id, ref=config["url_secret"],
                                    env_must_be_set=True) or _url_problem(
            step.workflow.org_id, config["url_secret"])
        if problem:
            yield f"{where}  url_secret: {problem}"
    for header, ref in refs.items():
        problem = reference_problem(org_id=step.workflow.org_id, ref=ref, url=url,
                                    env_must_be_set=True)
        if problem:
            yield f"{where}  header {header}: {problem}"


def _typed_problem(kind_name: str, config: dict) -> str | None:
    """What `validate_stored` refuses in an older step (a typed credential), never the value;
    None for a config that is fine, or not valid at all (it fails at run time, and says so)."""
    try:
        kind = kind_get(kind_name)
        kind.validate_config(config)
    except (UnknownKind, ValidationError):
        return None
    try:
        kind.validate_stored(config)
    except ValidationError as exc:
        return "; ".join(exc.messages)
    return None


def _schema_problem(schema, field: str) -> str | None:
    try:
        schema_credentials_check(schema, field=field)
    except ValidationError as exc:
        return "; ".join(exc.messages)
    return None


def _url_problem(org_id, ref) -> str | None:
    """Whether the URL a url_secret holds would be sent: an http(s) URL on a host the
    secret allows. Its value is read here, never printed: the message names the secret."""
    try:
        url_reference_resolve(org_id=org_id, ref=ref)
    except SecretUnavailable as exc:
        return exc.message
    return None


def provider_problems():
    for provider in Provider.objects.select_related("org").order_by("org__slug", "name"):
        if "?" in provider.base_url or "#" in provider.base_url:
            yield (f"org {provider.org.slug}  provider {provider.name}: the base URL has a "
                   "?query or #fragment (a key there is read by every viewer of the "
                   "provider): put the key in the API key secret")
        ref = provider.api_key_reference
        if ref is None:
            continue
        url = provider.base_url.rstrip("/") + "/chat/completions"
        problem = reference_problem(org_id=provider.org_id, ref=ref, url=url,
                                    env_must_be_set=True)
        if problem:
            state = "" if provider.active else " (inactive)"
            yield f"org {provider.org.slug}  provider {provider.name}{state}: {problem}"


class Command(BaseCommand):
    help = ("List step and provider secret references that do not resolve, and credentials "
            "typed into steps, schemas, providers, names, labels and descriptions; exit 1 "
            "if any.")

    def handle(self, *args, **options):
        problems = [*workflow_problems(), *step_problems(), *provider_problems(),
                    *free_text_problems()]
        for line in problems:
            # A name or a reference quoted in a line may hold a credential saved before
            # that was refused (a step's name, a provider's env name): never printed.
            self.stdout.write(credential_formats_redacted(line))
        if problems:
            self.stderr.write(f"{len(problems)} problem(s): secret references that will fail at "
                              "run time, or credentials typed in instead of a secret.")
            raise SystemExit(1)
        self.stdout.write("Every secret reference resolves.")
