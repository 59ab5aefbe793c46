"""`manage.py secrets_check`: every step and provider secret reference that would not resolve.

Run it after upgrading (and after changing AUXOT_OPERATOR_SECRETS), on a worker host: an
operator-granted variable must be set in the environment it runs in. Exit status 1 when
anything is listed. Values are never printed; only a `url_secret`'s is read (decrypted, with
the server's SECRET_KEY), to check it is an http(s) URL on a host the secret allows.
"""

from django.core.management.base import BaseCommand

from auxot.secrets import SecretUnavailable, reference_problem, url_reference_resolve
from workflows.kinds.http import Http
from workflows.models import Provider, Step


def step_problems():
    steps = Step.objects.filter(kind=Http.name).select_related("workflow__org").order_by(
        "workflow__org__slug", "workflow__slug", "position")
    for step in steps.iterator(chunk_size=500):
        config = step.config if isinstance(step.config, dict) else {}
        refs = config.get("secret_headers") or {}
        if not isinstance(refs, dict):
            refs = {"(secret_headers)": refs}
        url = config.get("url") if isinstance(config.get("url"), str) else None
        where = (f"org {step.workflow.org.slug}  workflow {step.workflow.slug}  "
                 f"step {step.position} {step.name!r}")
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
    help = "List step and provider secret references that do not resolve; exit 1 if any."

    def handle(self, *args, **options):
        problems = [*step_problems(), *provider_problems()]
        for line in problems:
            self.stdout.write(line)
        if problems:
            self.stderr.write(f"{len(problems)} secret reference(s) will fail at run time.")
            raise SystemExit(1)
        self.stdout.write("Every secret reference resolves.")
