"""Demo: one example workflow per step kind, each with its own intake.

Idempotent: workflows are found by slug, intakes by name, the provider by name. The
agent example uses the provider named by AUXOT_DEMO_AGENT_BASE_URL / _MODEL / _KEY_ENV;
without them its workflow and intake are seeded inactive. The key is copied, at the
operator's explicit request, into the demo org's secret `demo-ai-key`, bound to the base
URL's host: the provider itself can reach no environment variable.
The http example posts to the
demo web process's own echo endpoint (`/demo/echo`, mounted only under DEBUG), so the
demo needs no network and sends nothing to a third party; AUXOT_DEMO_HTTP_URL points it
elsewhere.
"""

import os
from dataclasses import dataclass

from auxot import crypto
from auxot.hosts import url_host
from auxot.models import Organization, Secret
from auxot.secrets import PURPOSE as SECRET_PURPOSE
from auxot.secrets import secret_create, secret_rotate, secret_update_hosts
from intakes.models import Intake
from intakes.services import intake_create
from workflows.models import Provider, Step, Workflow

AGENT_ENABLE = ("AUXOT_DEMO_AGENT_BASE_URL=https://api.openai.com/v1 "
                "AUXOT_DEMO_AGENT_MODEL=gpt-4o-mini AUXOT_DEMO_AGENT_KEY_ENV=OPENAI_API_KEY "
                "make run")
DEMO_KEY = "demo-ai-key"


@dataclass
class Example:
    kind: str
    intake: Intake
    active: bool
    body: str


def _examples(http_url: str) -> list[tuple[str, str, str, list[dict], str]]:
    """(kind, slug, name, steps, sample body)."""
    return [
        ("transform", "example-transform", "Example: transform", [
            {"name": "Shape ticket", "kind": "transform", "config": {
                "expression": "{ticket: input.ticket_id, who: input.customer}"}}],
         '{"ticket_id":"SUP-1","customer":"Acme"}'),
        ("delay", "example-delay", "Example: delay", [
            {"name": "Wait 5 s", "kind": "delay", "config": {"seconds": 5}}], "{}"),
        ("http", "example-http", "Example: http", [
            {"name": "Post to receiver", "kind": "http", "config": {
                "method": "POST", "url": http_url, "body": "{customer: input.customer}",
                "headers": {"X-Ticket": "input.ticket_id"}, "timeout_seconds": 10}}],
         '{"ticket_id":"SUP-2","customer":"Acme"}'),
        ("approval", "example-approval", "Example: approval", [
            {"name": "Manager sign-off", "kind": "approval", "config": {
                "instructions": "Approve refunds under 500 EUR.", "deadline_seconds": 86400}},
            {"name": "Record decision", "kind": "transform", "config": {
                "expression": "{approved_by: previous.decided_by, note: previous.comment}"}}],
         '{"refund_eur":120}'),
        ("agent", "example-agent", "Example: agent", [
            {"name": "Triage", "kind": "agent", "config": {
                "provider": "demo-ai", "json_output": True,
                "system": "You triage support tickets. Answer JSON: {\"priority\": ...}.",
                "prompt": "Ticket from {{ input.customer }}: {{ input.text }}"}}],
         '{"customer":"Acme","text":"Checkout is down"}'),
    ]


def _demo_key(org: Organization, base: str, user) -> str:
    """The demo-ai-key secret's name, created or refreshed from the named variable."""
    key_env = os.environ.get("AUXOT_DEMO_AGENT_KEY_ENV", "").strip()
    value = os.environ.get(key_env, "") if key_env else ""
    host = url_host(base) if base else None
    if not value or host is None:
        return ""
    secret = Secret.objects.filter(org=org, name=DEMO_KEY).first()
    if secret is None:
        secret_create(org=org, name=DEMO_KEY, value=value, allowed_hosts=[host], actor=user)
        return DEMO_KEY
    if secret.allowed_hosts != [host]:
        secret_update_hosts(secret=secret, allowed_hosts=[host], actor=user)
    if crypto.decrypt(secret.value_encrypted, purpose=SECRET_PURPOSE) != value:
        secret_rotate(secret=secret, value=value, actor=user)
    return DEMO_KEY


def _provider(org: Organization, user) -> bool:
    base = os.environ.get("AUXOT_DEMO_AGENT_BASE_URL", "").strip()
    model = os.environ.get("AUXOT_DEMO_AGENT_MODEL", "").strip()
    active = bool(base and model)
    Provider.objects.update_or_create(org=org, name="demo-ai", defaults={
        "base_url": base or "http://127.0.0.1:1/v1", "model": model or "unset",
        "api_key_secret": _demo_key(org, base, user), "api_key_env": "", "active": active,
        "concurrency_limit": 2})
    return active


ECHO_PATH = "/demo/echo"


def demo_http_url(base_url: str) -> str:
    """Where the http example posts: AUXOT_DEMO_HTTP_URL, else the demo's own echo."""
    return os.environ.get("AUXOT_DEMO_HTTP_URL", "").strip() or f"{base_url}{ECHO_PATH}"


def _http_url_update(workflow: Workflow, url: str) -> None:
    # A demo seeded earlier (another port, an older default) follows the current URL.
    for step in Step.objects.filter(workflow=workflow, kind="http"):
        if step.config.get("url") != url:
            step.config = {**step.config, "url": url}
            step.save(update_fields=["config"])


def demo_seed_step_examples(*, org: Organization, user, http_url: str) -> list[Example]:
    agent_active = _provider(org, user)
    examples = []
    for kind, slug, name, steps, body in _examples(http_url):
        active = agent_active if kind == "agent" else True
        workflow, created = Workflow.objects.get_or_create(
            org=org, slug=slug, defaults={"name": name, "active": active})
        if created:
            for position, step in enumerate(steps, start=1):
                Step.objects.create(workflow=workflow, position=position, **step)
        elif kind == "http":
            _http_url_update(workflow, http_url)
        Workflow.objects.filter(pk=workflow.pk).update(active=active)
        intake = Intake.objects.filter(org=org, name=name).first() or intake_create(
            org=org, workflow=workflow, name=name, created_by=user)
        Intake.objects.filter(pk=intake.pk).update(active=active)
        examples.append(Example(kind=kind, intake=intake, active=active, body=body))
    return examples
