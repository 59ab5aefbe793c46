"""A credential typed into an `http` step (a constant in a credential header instead of a
`secret_headers` reference) is refused when the step is saved; a step saved before that
rule keeps running, is shown with the constant hidden to whoever may not change the
workflow, and what its receiver quotes back of it is cut from the output."""

import pytest
from django.core.exceptions import ValidationError

from tests.conftest import make_workflow
from tests.fakeserver import Reply
from workflows.batch import work_item_process
from workflows.kinds import kind_get
from workflows.models import Step
from workflows.services import work_item_create

pytestmark = pytest.mark.django_db
TOKEN = "tok3nTypedIn42"
CREDENTIAL_HEADERS = ["Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key",
                      "X-Auth-Token", "X-Client-Secret", "X-Hub-Signature", "api_key"]
# Every way an expression can hold a constant, alone or beside what it reads from the data.
TYPED = [f"'Bearer {TOKEN}'", f'`"{TOKEN}"`', f"join(' ', ['Bearer', '{TOKEN}'])",
         f"input.token || '{TOKEN}'", f'`{{"v": "{TOKEN}"}}`', "`4242424242424242`"]
# What a credential header may hold: what the caller sent, and a scheme word before it.
READ = ["input.token", "join(' ', ['Bearer', input.token])", "join('', ['Bearer ', input.t])",
        "join('', ['token=', input.t])", "input.token || ''"]


def _step(org, headers: dict, **config) -> Step:
    workflow = make_workflow(org, [])
    return Step(workflow=workflow, position=1, name="Call", kind="http",
                config={"method": "POST", "url": "https://api.example.com/x",
                        "headers": headers, **config})


@pytest.mark.parametrize("expression", TYPED)
@pytest.mark.parametrize("name", CREDENTIAL_HEADERS)
def test_a_constant_in_a_credential_header_is_refused_when_saved(cast, name, expression):
    with pytest.raises(ValidationError) as refused:
        _step(cast.org_a, {name: expression}).full_clean()
    [message] = refused.value.message_dict["config"]
    assert message.startswith(f"headers.{name}: a credential typed into the step")
    assert f'"secret_headers": {{"{name}"' in message  # says what to write instead
    assert TOKEN not in message and "4242" not in message


@pytest.mark.parametrize("expression", READ)
@pytest.mark.parametrize("name", CREDENTIAL_HEADERS)
def test_a_credential_header_may_carry_what_the_caller_sent(cast, name, expression):
    _step(cast.org_a, {name: expression}).full_clean()


@pytest.mark.parametrize("name", ["Content-Type", "Accept", "X-Ticket", "Idempotency-Key",
                                  "User-Agent"])
def test_other_headers_may_hold_constants(cast, name):
    _step(cast.org_a, {name: "'application/vnd.example+json; v=2'"}).full_clean()


def test_a_constant_under_a_credential_name_inside_a_header_is_refused(cast):
    with pytest.raises(ValidationError, match=r"headers\.X-Meta"):
        _step(cast.org_a, {"X-Meta": f'`{{"api_key": "{TOKEN}"}}`'}).full_clean()


def test_a_step_saved_before_the_rule_still_runs_and_its_echo_is_cut(cast, fake_server):
    """The receiver quotes the header back (an echo, an error page): every key holder
    polling the item would read the credential in the output."""
    fake_server.script = [Reply(200, {"you_sent": f"Bearer {TOKEN}", "token": TOKEN},
                                {"Location": f"https://x.example/?t={TOKEN}"})]
    workflow = make_workflow(cast.org_a, [("http", {
        "method": "POST", "url": f"{fake_server.url}/hook",
        "headers": {"Authorization": f"'Bearer {TOKEN}'"}})])  # saved without clean()
    item = work_item_create(workflow=workflow, input={})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.status == "completed", item.error
    assert fake_server.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(item.output), item.output
    assert item.output["json"] == {"you_sent": "REDACTED", "token": "REDACTED"}


def test_what_the_caller_sent_in_a_credential_header_is_cut_from_the_output_too(
        cast, fake_server):
    fake_server.script = [Reply(200, {"echo": TOKEN})]
    workflow = make_workflow(cast.org_a, [("http", {
        "method": "POST", "url": f"{fake_server.url}/hook",
        "headers": {"X-Api-Key": "input.key", "X-Ticket": "input.ticket"}})])
    item = work_item_create(workflow=workflow, input={"key": TOKEN, "ticket": "T-1"})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.output["json"] == {"echo": "REDACTED"}


@pytest.mark.parametrize("expression", TYPED)
def test_the_shown_config_hides_a_typed_credential_header_and_body(expression):
    config = {"method": "POST", "url": "https://api.example.com/x",
              "headers": {"Authorization": expression, "X-Ticket": "input.ticket"},
              "body": f"{{order: input.order, api_key: '{TOKEN}'}}"}
    shown = kind_get("http").config_shown(config)
    assert shown["headers"] == {"Authorization": "REDACTED", "X-Ticket": "input.ticket"}
    assert shown["body"] == "REDACTED"
    assert config["headers"]["Authorization"] == expression  # the stored config is untouched


def test_the_shown_config_keeps_what_holds_no_typed_credential():
    config = {"method": "POST", "url": "https://api.example.com/x",
              "headers": {"Authorization": "join(' ', ['Bearer', input.token])",
                          "Content-Type": "'application/json'"},
              "body": "{order: input.order, api_key: input.key, note: 'a long constant'}"}
    assert kind_get("http").config_shown(config) == config


def test_what_a_body_sends_under_a_credential_name_is_cut_from_the_output(cast, fake_server):
    """The fake receiver echoes the body it got, as many do."""
    workflow = make_workflow(cast.org_a, [("http", {
        "method": "POST", "url": f"{fake_server.url}/hook",
        "body": f"{{auth: {{api_key: '{TOKEN}', user: 'svc-user'}}, order: input.order}}"})])
    item = work_item_create(workflow=workflow, input={"order": "A-12345"})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert fake_server.requests[0]["json"]["auth"]["api_key"] == TOKEN
    assert item.output["json"]["got"] == {"auth": {"api_key": "REDACTED", "user": "svc-user"},
                                          "order": "A-12345"}


@pytest.mark.parametrize("prefix", [f"Bearer {TOKEN} ", "sk_live_4eC39HqLy ",
                                    "token=" + "a" * 40 + "; session="])
def test_a_credential_typed_into_a_secret_headers_prefix_is_refused(cast, prefix):
    step = _step(cast.org_a, {}, secret_headers={
        "Authorization": {"secret": "CRM_TOKEN", "prefix": prefix}})
    with pytest.raises(ValidationError) as refused:
        step.full_clean()
    [message] = refused.value.message_dict["config"]
    assert message.startswith("secret_headers.Authorization.prefix: ")
    assert prefix.strip() not in message
    shown = kind_get("http").config_shown(step.config)
    assert shown["secret_headers"]["Authorization"] == {"secret": "CRM_TOKEN",
                                                        "prefix": "REDACTED"}


@pytest.mark.parametrize("prefix", ["Bearer ", "token=", "Klaviyo-API-Key ", "SSWS ",
                                    'Token token="', "AWS4-HMAC-SHA256 ", "v2 "])
def test_a_secret_headers_prefix_of_words_is_kept(cast, prefix):
    from auxot.secrets import secret_create

    secret_create(org=cast.org_a, name="CRM_TOKEN", value="s3cret-value",
                  allowed_hosts=["api.example.com"])
    step = _step(cast.org_a, {}, secret_headers={
        "Authorization": {"secret": "CRM_TOKEN", "prefix": prefix}})
    step.full_clean()
    assert kind_get("http").config_shown(step.config) == step.config


def test_a_step_that_raises_shows_the_urls_its_error_quotes_redacted(cast, monkeypatch):
    """A bug in a step kind fails the item with its exception's text, which a library may
    have written with the URL it was asked for."""
    from workflows.kinds.http import Http

    def raises(self, ctx):
        raise ValueError(f"cannot send to https://hooks.example.com/services/{TOKEN}?k={TOKEN}")

    monkeypatch.setattr(Http, "execute", raises)
    workflow = make_workflow(cast.org_a, [("http", {"method": "GET",
                                                    "url": "https://api.example.com/x"})])
    item = work_item_create(workflow=workflow, input={})
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    assert item.error["code"] == "step_error"
    assert item.error["message"] == ("ValueError: cannot send to https://hooks.example.com/"
                                     "services/REDACTED?k=REDACTED")
