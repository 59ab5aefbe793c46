"""Credentials known by their format (auxot/credentials.py: a GitHub token, a private key, one of
our own API keys, …) planted in every free-text field of every step kind and in JSON
Schemas, the class of test_planted_credentials.py for what names cannot catch:

- saving is refused, naming the config path and the credential's kind, never its value,
  and saying what the step's kind can do instead;
- a step or schema saved before the rule shows it REDACTED to members and auditors (the
  kind's `config_shown`, every admin page) and `manage.py secrets_check` lists it;
- it runs as before (checked at save, never at run), except an Auxot API key in an `http`
  or `agent` step, which sends nothing and fails with `auxot_key_in_config`.
"""

import io
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse

from tests.admin.test_planted_credentials import _pages, _text
from tests.auxot.test_credential_formats import SAMPLES
from tests.conftest import make_workflow
from tests.fakeserver import Reply, chat
from workflows.batch import work_item_process
from workflows.handoffs import schema_shown, violations
from workflows.kinds import REGISTRY, kind_get
from workflows.models import Provider, Step, Workflow
from workflows.services import work_item_create

FORMATS = {kind: values[0] for kind, values in SAMPLES.items()}
URL = "https://api.example.com/x"


def _one_line(value: str) -> bool:
    return "\n" not in value and " " not in value


# Every free-text field of every kind, and a key of its own no kind's validation refuses
# (`note`): (the path named when refused, a valid config holding the text there, whether
# the text fits there). Expressions hold it as a constant: raw, JSON, or in a placeholder.
PLANTS = {
    "transform": [
        ("expression", lambda v: {"expression": f"{{n: input.n, note: '{v}'}}"}, None),
        ("expression", lambda v: {"expression": f"`{json.dumps({'note': v})}`"}, None),
        ("note", lambda v: {"expression": "input", "note": v}, None),
    ],
    "delay": [
        ("note", lambda v: {"seconds": 5, "note": v}, None),
    ],
    "http": [
        ("body", lambda v: {"method": "POST", "url": URL,
                            "body": f"{{n: input.n, note: '{v}'}}"}, None),
        ("headers.X-Ticket", lambda v: {"method": "POST", "url": URL,
                                        "headers": {"X-Ticket": f"'{v}'"}}, _one_line),
        ("url_expression", lambda v: {"method": "GET", "url_expression":
                                      f"join('', ['{URL}?q=', '{v}'])"}, None),
        ("url", lambda v: {"method": "GET", "url": f"{URL}?q={v}"}, _one_line),
        ("note", lambda v: {"method": "GET", "url": URL, "note": v}, None),
    ],
    "approval": [
        ("instructions", lambda v: {"instructions": f"Approve refunds; the token is {v}."},
         None),
        ("note[0]", lambda v: {"instructions": "Approve.", "note": [v]}, None),
    ],
    "agent": [
        ("prompt", lambda v: {"provider": "p", "prompt": f"Use {v} for {{{{ input.text }}}}."},
         None),
        ("prompt", lambda v: {"provider": "p", "prompt":
                              f"Hi {{{{ join('', ['{v}', input.x]) }}}}"}, _one_line),
        ("system", lambda v: {"provider": "p", "prompt": "Summarize {{ input.text }}",
                              "system": f"You hold {v}"}, None),
        ("note.deep", lambda v: {"provider": "p", "prompt": "Hi", "note": {"deep": v}},
         None),
    ],
}
# What each kind tells the admin to do instead, for a field the provider or receiver gets.
ADVICE = {"transform": "cannot read an organization secret", "delay": "cannot use an "
          "organization secret", "approval": "cannot use an organization secret",
          "agent": "AI provider", "http": "secret"}
CASES = [(kind, path, build, credential, value)
         for kind, plants in PLANTS.items() for path, build, fits in plants
         for credential, value in FORMATS.items() if fits is None or fits(value)]
IDS = [f"{kind}-{path}-{i % len(FORMATS)}-{credential}"
       for i, (kind, path, _, credential, _) in enumerate(CASES)]


def _pieces(value: str) -> list[str]:
    """What must not be shown: any 10 characters of the value's random tail."""
    tail = value.strip()[-40:]
    return [tail[i:i + 10] for i in range(len(tail) - 9)]


def _shows(text: str, value: str) -> bool:
    return any(piece in text for piece in _pieces(value))


def test_every_kind_has_its_free_text_planted():
    """A new kind joins PLANTS with its free-text fields."""
    assert set(PLANTS) == set(REGISTRY)
    assert {path for path, _, _ in PLANTS["agent"]} >= {"prompt", "system"}


@pytest.mark.parametrize(("kind", "path", "build", "credential", "value"), CASES, ids=IDS)
def test_a_planted_credential_is_refused_when_the_step_is_saved(kind, path, build,
                                                                credential, value):
    config = build(value)
    step = Step(workflow=Workflow(name="W", slug="w"), position=1, name="s", kind=kind,
                config=config)
    kind_get(kind).validate_config(config)  # the config is fine but for the credential
    with pytest.raises(ValidationError) as refused:
        step.clean()
    messages = refused.value.message_dict["config"]
    mine = [m for m in messages if m.startswith(f"{path}: ") and credential in m]
    assert mine, messages
    assert "shown to everyone who may view the workflow" in mine[0]
    advice = ADVICE[kind] if not path.startswith("note") or kind == "http" else (
        "cannot use an organization secret")
    assert advice in mine[0], mine[0]
    assert not any(_shows(message, value) for message in messages)


@pytest.mark.parametrize(("kind", "path", "build", "credential", "value"), CASES, ids=IDS)
def test_an_older_step_shows_a_planted_credential_redacted(kind, path, build, credential,
                                                           value):
    config = build(value)
    shown = json.dumps(kind_get(kind).config_shown(config))
    assert not _shows(shown, value), shown
    assert "REDACTED" in shown
    assert config == build(value)  # the stored config is untouched


@pytest.mark.parametrize("kind", ["transform", "http", "agent"])
def test_a_constant_found_only_once_decoded_is_refused_and_its_string_shown_redacted(kind):
    """A JSON constant may escape what it holds (`\\u0067hp_…` is `ghp_…`): the expression
    (or the placeholder) is read as jmespath reads it, and shown REDACTED whole."""
    token = FORMATS["GitHub token"]
    escaped = json.dumps({"note": token}).replace('"gh', '"\\u0067h')
    assert token not in escaped and json.loads(escaped) == {"note": token}
    config, path = {
        "transform": ({"expression": f"`{escaped}`"}, "expression"),
        "http": ({"method": "POST", "url": URL, "body": f"`{escaped}`"}, "body"),
        "agent": ({"provider": "p", "prompt": f"Hi {{{{ `{escaped}` }}}}"}, "prompt"),
    }[kind]
    with pytest.raises(ValidationError) as refused:
        kind_get(kind).validate_stored(config)
    assert refused.value.messages[0].startswith(f"{path}: a GitHub token")
    assert kind_get(kind).config_shown(config)[path] == "REDACTED"


def test_the_text_around_a_redacted_credential_is_shown():
    token = FORMATS["GitHub token"]
    config = {"provider": "p", "prompt": f"Use {token} for {{{{ input.text }}}}.",
              "temperature": 0.2}
    assert kind_get("agent").config_shown(config) == {
        "provider": "p", "prompt": "Use REDACTED for {{ input.text }}.", "temperature": 0.2}


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_a_credential_as_a_key_is_refused_without_naming_it(kind):
    token = FORMATS["Slack token"]
    build = PLANTS[kind][-1][1]  # the `note` plant: a key of the step's own
    config = {**build("x"), "note": {token: "value"}}
    with pytest.raises(ValidationError) as refused:
        kind_get(kind).validate_stored(config)
    [message] = refused.value.messages
    assert message.startswith("note (a key): a Slack token")
    assert token not in message
    assert token not in json.dumps(kind_get(kind).config_shown(config))


@pytest.mark.parametrize("credential", ["Slack webhook URL", "Discord webhook URL"])
def test_a_chat_webhook_as_an_http_steps_url_is_refused_for_url_secret(credential):
    """The URL is the credential: it belongs in an organization secret named by
    `url_secret`, where a step's viewers cannot read it."""
    config = {"method": "POST", "url": FORMATS[credential], "body": "input"}
    kind_get("http").validate_config(config)
    with pytest.raises(ValidationError) as refused:
        kind_get("http").validate_stored(config)
    [message] = refused.value.messages
    assert message.startswith(f"url: a {credential}") and '"url_secret"' in message
    assert not _shows(message, FORMATS[credential])
    kind_get("http").validate_stored({"method": "POST", "url_secret": {"secret": "HOOK"},
                                      "body": "input"})


def test_a_config_without_credentials_is_saved_and_shown_as_it_is():
    configs = {
        "transform": {"expression": "{order: input.order, note: 'a long constant 12345'}"},
        "delay": {"seconds": 5},
        "http": {"method": "POST", "url": URL, "headers": {"X-Ticket": "input.ticket"},
                 "body": "{id: input.id, trace: '5f0c6a7e-0b8e-4d55-9b7e-1b9a3f1c2d3e'}"},
        "approval": {"instructions": "Approve refunds under 500 EUR (sha 3f786850e387550fdab8"
                                     "36ed7e6dc881de23001b)."},
        "agent": {"provider": "p", "prompt": "Summarize {{ input.text }} for ops@example.com",
                  "system": "GitHub tokens start with ghp_; never repeat one."},
    }
    assert set(configs) == set(REGISTRY)
    for kind, config in configs.items():
        kind_get(kind).validate_stored(config)
        assert kind_get(kind).config_shown(config) == config


# --- JSON Schemas: a workflow's input schema, a step's output schema --------------------
SCHEMA_PLANTS = [
    ("properties.code.const", lambda v: {"properties": {"code": {"const": v}}}),
    ("properties.code.default", lambda v: {"properties": {"code": {"default": v}}}),
    ("properties.code.examples[0]", lambda v: {"properties": {"code": {"examples": [v]}}}),
    ("properties.code.enum[1]", lambda v: {"properties": {"code": {"enum": ["a", v]}}}),
    ("description", lambda v: {"type": "object", "description": f"Send {v} as code"}),
]
SCHEMA_CASES = [(path, build, credential, value) for path, build in SCHEMA_PLANTS
                for credential, value in FORMATS.items()]


@pytest.mark.parametrize(("path", "build", "credential", "value"), SCHEMA_CASES,
                         ids=[f"{p}-{c}" for p, _, c, _ in SCHEMA_CASES])
def test_a_credential_in_a_json_schema_is_refused_and_shown_redacted(path, build, credential,
                                                                     value):
    schema = build(value)
    with pytest.raises(ValidationError) as refused:
        Workflow(name="W", slug="w", input_schema=schema).clean()
    [message] = refused.value.message_dict["input_schema"]
    assert message.startswith(f"input_schema.{path}: ") and credential in message
    assert not _shows(message, value)
    step = Step(workflow=Workflow(name="W", slug="w"), position=1, name="s",
                kind="transform", config={"expression": "input"}, output_schema=schema)
    with pytest.raises(ValidationError) as refused:
        step.clean()
    [message] = refused.value.message_dict["output_schema"]
    assert message.startswith(f"output_schema.{path}: ")
    assert not _shows(json.dumps(schema_shown(schema)), value)


def test_a_schema_refusal_does_not_quote_a_credential_to_the_caller():
    """jsonschema's message quotes `const` and `enum`: an older schema's credential (and a
    caller's own) is REDACTED in the errors a refused input gets."""
    token = FORMATS["Auxot API key"]
    schema = {"properties": {"code": {"const": token}, "kind": {"enum": ["a", token]},
                             "n": {"type": "integer"}}}
    found = violations({"code": "x", "kind": "b", "n": FORMATS["GitHub token"]}, schema)
    assert len(found) == 3
    assert not any(_shows(json.dumps(found), value) for value in FORMATS.values())
    assert all("REDACTED" in v["message"] for v in found)


# --- older rows: every admin page, secrets_check, the run -----------------------------------
@pytest.fixture
def older(cast):
    """A workflow of every kind's plants, saved before the rule (no clean()), each plant
    with a format of its own, and its schemas too."""
    planted, steps, formats = {}, [], list(FORMATS.items())
    for kind, plants in PLANTS.items():
        for path, build, fits in plants:
            credential, value = next((c, v) for c, v in formats[len(steps) % len(formats):]
                                     + formats if fits is None or fits(value=v))
            steps.append((kind, build(value)))
            planted[(len(steps), path)] = (credential, value)
    workflow = make_workflow(cast.org_a, steps, name="Older")
    schema_value = FORMATS["Google API key"]
    workflow.input_schema = {"properties": {"code": {"const": schema_value}}}
    workflow.save()
    Step.objects.filter(workflow=workflow, position=1).update(
        output_schema={"properties": {"x": {"examples": [FORMATS["npm token"]]}}})
    planted[(0, "input_schema.properties.code.const")] = ("Google API key", schema_value)
    planted[(1, "output_schema.properties.x.examples[0]")] = ("npm token", FORMATS["npm token"])
    return workflow, planted


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["auditor_a", "member_a"])
def test_no_page_shows_a_viewer_a_planted_credential(client, cast, older, who):
    workflow, planted = older
    pages = _pages(client, getattr(cast, who))
    assert reverse("admin:workflows_workflow_change", args=[workflow.pk]) in pages
    for page in pages:
        text = _text(client.get(page))
        leaked = [path for path, (_, value) in planted.items() if _shows(text, value)]
        assert not leaked, (who, page, leaked)
    page = _text(client.get(reverse("admin:workflows_workflow_change", args=[workflow.pk])))
    assert page.count("REDACTED") >= len(planted)


@pytest.mark.django_db
def test_the_admin_edits_them_whole_and_saving_as_they_are_is_refused(client, cast, older):
    from tests.admin.test_admin_org_fixed import _form_data

    workflow, planted = older
    client.force_login(cast.admin_a)
    url = reverse("admin:workflows_workflow_change", args=[workflow.pk])
    page = client.get(url)
    assert all(_shows(page.content.decode(), value) for _, value in planted.values()
               if "\n" not in value)  # the form that edits them holds them
    refused = client.post(url, {**_form_data(page.content.decode()), "_save": "1"})
    assert refused.status_code == 200
    errors = json.dumps([refused.context["adminform"].form.errors] + [
        form.errors for formset in refused.context["inline_admin_formsets"]
        for form in formset.formset.forms])
    assert "input_schema.properties.code.const: a Google API key" in errors
    assert "prompt: " in errors and "instructions: " in errors
    assert not any(_shows(errors, value) for _, value in planted.values())


@pytest.mark.django_db
def test_secrets_check_lists_each_without_its_value(older):
    workflow, planted = older
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("secrets_check", stdout=out, stderr=err)
    assert exited.value.code == 1
    text = out.getvalue()
    for (position, path), (credential, _) in planted.items():
        where = f"workflow {workflow.slug}" + (f"  step {position} " if position else "  ")
        assert any(where in line and f"{path}: " in line and credential in line
                   for line in text.splitlines()), (position, path, text)
    assert not any(_shows(text + err.getvalue(), value) for _, value in planted.values())


@pytest.mark.django_db
def test_an_older_http_step_still_sends_a_credential_other_than_ours(cast, fake_server):
    """Checked at save, never at run: the receiver gets what the step held."""
    token = FORMATS["GitHub token"]
    workflow = make_workflow(cast.org_a, [("http", {
        "method": "POST", "url": f"{fake_server.url}/hook",
        "body": f"{{n: input.n, note: '{token}'}}"})])
    item = work_item_create(workflow=workflow, input={"n": 1})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed", item.error
    assert fake_server.requests[0]["json"]["note"] == token


def _agent_provider(cast, fake_server):
    from auxot.secrets import secret_create

    secret_create(org=cast.org_a, name="AI_KEY", value="provider-key-1",
                  allowed_hosts=["127.0.0.1"])
    Provider.objects.create(org=cast.org_a, name="p", base_url=fake_server.url + "/v1",
                            model="m", api_key_secret="AI_KEY", timeout_seconds=5)


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["http", "agent"])
def test_an_older_step_holding_an_auxot_key_sends_nothing(cast, fake_server, kind):
    """Our own key (its checksum makes it certain) would give the receiver, or the AI
    provider, this server's API as the key's owner: the step fails instead."""
    from apikeys.services import apikey_issue

    key = apikey_issue(org=cast.org_a, label="pasted", user=cast.admin_a).token
    if kind == "agent":
        _agent_provider(cast, fake_server)
        config = {"provider": "p", "prompt": f"Call us with {key}: {{{{ input.text }}}}"}
    else:
        config = {"method": "POST", "url": f"{fake_server.url}/hook",
                  "headers": {"Authorization": f"'Bearer {key}'"}}
    workflow = make_workflow(cast.org_a, [(kind, config)])
    item = work_item_create(workflow=workflow, input={"text": "t"})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "failed"
    assert item.error["code"] == "auxot_key_in_config", item.error
    path = "prompt" if kind == "agent" else "headers.Authorization"
    assert item.error["message"].startswith(f"{path}: an Auxot API key")
    assert key not in json.dumps(item.error)
    assert fake_server.requests == []


@pytest.mark.django_db
@pytest.mark.parametrize("where", ["input", "mistyped"])
def test_an_auxot_key_not_typed_into_the_step_is_sent(cast, fake_server, where):
    """What the caller sent is the caller's to send; a key with a wrong checksum is no key."""
    from apikeys.services import apikey_issue

    fake_server.script = [Reply(200, chat("ok"))]
    key = apikey_issue(org=cast.org_a, label="k", user=cast.admin_a).token
    mistyped = key[:-1] + ("0" if key[-1] != "0" else "1")
    _agent_provider(cast, fake_server)
    prompt = "Check {{ input.text }}" if where == "input" else f"Check {mistyped}"
    workflow = make_workflow(cast.org_a, [("agent", {"provider": "p", "prompt": prompt})])
    item = work_item_create(workflow=workflow, input={"text": key})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed", item.error
    sent = fake_server.requests[0]["json"]["messages"][0]["content"]
    assert sent == (f"Check {key}" if where == "input" else f"Check {mistyped}")
