"""`http`: one request through the outbound guard, retried with backoff on 429/5xx."""

import json
import re
from typing import Any

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from jmespath.exceptions import JMESPathError

from auxot.outbound import (
    RefusedDestination,
    header_name_problem,
    parts_redacted,
    url_check,
    url_hidden_parts,
    url_redact,
)
from auxot.secrets import (
    SecretUnavailable,
    credential_literal,
    credential_named,
    credential_parts,
    prefix_holds_credential,
    reference_parse,
    reference_problem,
    reference_resolve,
    url_reference_resolve,
)
from auxot.storable import NotJSON, Unstorable, json_loads, text_storable
from workflows.kinds._shared import (
    auxot_key_failure,
    config_failure,
    expression_check,
    expression_error,
    expression_search,
    response_text,
    retry,
    retry_after,
    retryable,
    secret_sent_parts,
    send,
)
from workflows.kinds.base import (
    STEP_TIMEOUT,
    Complete,
    Fail,
    Outcome,
    RetryCodes,
    StepContext,
    StepKind,
)
from workflows.kinds.typed import expression_literals

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an RFC 9110 token
DEFAULT_RESPONSE_HEADERS = ["content-type", "location", "etag", "retry-after"]
MAX_TEXT = 65536
URL_KEYS = ("url", "url_expression", "url_secret")




def response_body(response: requests.Response, hidden: tuple[str, ...] = ()
                  ) -> dict[str, Any]:
    """`json` when the answer is JSON the database stores exactly as sent, else `text`: a
    tenant's server may answer anything, and its answer must never make the step's result
    impossible to record (the rule is `Http`'s docstring). `hidden`: what the step sent
    that the output must not show (from `Http._request`), cut from the text before it is cut to
    size, so a secret across the cut goes whole."""
    text = response_text(response)
    try:
        return {"json": parts_redacted(json_loads(text), hidden)}
    except (NotJSON, Unstorable):
        return {"text": parts_redacted(text, hidden)[:MAX_TEXT]}


def _url_validate(url: str) -> None:
    """The outbound policy at save time, so an admin sees a refused URL before it runs."""
    try:
        url_check(url, purpose="http")
    except RefusedDestination as exc:
        raise ValidationError({"config": ValidationError(f"url: {exc}", code=exc.code)}
                              ) from None


def _header_name_validate(name: str, what: str) -> None:
    """The guard's rule for header names at save time (it refuses them when sent, too)."""
    if not HEADER_NAME.match(name):
        raise ValidationError({"config": f"{what}: {name!r} is not a header name."})
    if problem := header_name_problem(name):
        raise ValidationError({"config": f"{what}: {problem}."})


def typed_credential(expression: Any, name: str | None = None) -> bool:
    """Whether an expression (a header's, named `name`, or the body) holds a constant that
    may be a credential: one under a credential's name, the header's own or a key's in it
    (`'Bearer abc…'` for Authorization, `{api_key: 'abc…'}`). A value read from the data
    (`input.token`) or a bare scheme word (`join(' ', ['Bearer', input.token])`) is not."""
    try:
        literals = expression_literals(expression)
    except (JMESPathError, TypeError):
        return False  # not an expression: validate_config says so
    return any(credential_literal(value) and (credential_named(key) or credential_named(name))
               for key, value in literals)


def _body_credentials(value: Any, name: str | None = None) -> list[str]:
    """The values a body sends under a credential's name (`{"api_key": …}`, at any depth)."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _body_credentials(item, key)]
    if isinstance(value, list):
        return [found for item in value for found in _body_credentials(item, name)]
    return [str(value)] if credential_named(name) and credential_literal(value) else []


class Http(StepKind):
    """config:
    {"method": "POST",
     "url": "https://..." | "url_expression": "<jmespath>" | "url_secret": {"secret": "NAME"},
     "headers": {"X-Ticket": "<jmespath>"}, "body": "<jmespath>",
     "secret_headers": {"Authorization": {"secret": "CRM_TOKEN", "prefix": "Bearer "}},
     "timeout_seconds": 10, "response_headers": ["etag"]}

    output: {"status", "headers", "json" | "text"}. The answer is decoded with its declared
    charset, else UTF-8, bytes that do not decode, NUL and unpaired surrogates becoming
    U+FFFD (header values too). That text is `json` when it is standard JSON the database
    stores exactly as sent (auxot/storable.py: no NaN/Infinity, numbers of at most 1,000
    digits and in range, nesting up to 64 levels, no `\\u0000` or unpaired-surrogate
    escapes); anything else is `text` (its first 65,536 characters): the step completes and
    no JSON value is changed behind the receiver's back. An agent's reply meets the same
    rule (a reply that is not such JSON is `bad_agent_output`).
    """

    name = "http"
    label = "HTTP request"
    # A request never waits past the attempt's lease: another worker would take it over.
    numeric_settings = {"timeout_seconds": STEP_TIMEOUT}
    # 429, 5xx, a timeout or a connection error: retried with backoff.
    retry_codes = RetryCodes(attempt="http_unavailable", exhausted="http_retries_exhausted")

    def validate_config(self, config: dict) -> None:
        method = config.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ValidationError({"config": f"method must be one of {sorted(METHODS)}."})
        if sum(key in config for key in URL_KEYS) != 1:
            raise ValidationError({"config": 'Give exactly one of "url", "url_expression" or '
                                             '"url_secret".'})
        if "url_secret" in config:
            self._validate_url_secret(config["url_secret"])
        elif "url" in config:
            url = config["url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValidationError({"config": "url must be an absolute http(s) URL."})
            _url_validate(url)
        else:
            expression_check(config["url_expression"], "url_expression")
        headers = config.get("headers", {})
        if not isinstance(headers, dict):
            raise ValidationError({"config": "headers must map names to jmespath expressions."})
        for name, expression in headers.items():
            _header_name_validate(name, "headers")
            expression_check(expression, f"headers.{name}")
        if "body" in config:
            expression_check(config["body"], "body")
        self._validate_secrets(config.get("secret_headers", {}))
        timeout = config.get("timeout_seconds", settings.AUXOT_HTTP_TIMEOUT_SECONDS)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
                0 < timeout <= 600):
            raise ValidationError({"config": "timeout_seconds must be 0 < n <= 600, and at most "
                                             "the step's timeout (checked when saved)."})
        wanted = config.get("response_headers", [])
        if not isinstance(wanted, list) or not all(isinstance(h, str) for h in wanted):
            raise ValidationError({"config": "response_headers must be a list of names."})

    def validate_stored(self, config: dict) -> None:
        for name, expression in config.get("headers", {}).items():
            if typed_credential(expression, name):
                raise ValidationError({"config": (
                    f"headers.{name}: a credential typed into the step (a constant in a "
                    "credential header) is shown to everyone who may view the workflow. "
                    "Create an organization secret (Secrets) and send it with "
                    f'"secret_headers": {{"{name}": {{"secret": "<name>", "prefix": '
                    '"Bearer "}} instead.')})
        for name, ref in config.get("secret_headers", {}).items():
            if prefix_holds_credential(ref.get("prefix")):
                raise ValidationError({"config": (
                    f"secret_headers.{name}.prefix: the prefix is shown to everyone who may "
                    "view the workflow, and this one holds more than the words before the "
                    "secret (a word with a digit, or over 32 characters). Put the whole "
                    "credential in the organization secret.")})
        super().validate_stored(config)

    def typed_credential_advice(self, path: str) -> str:
        root, _, rest = path.partition(".")
        if root in ("headers", "secret_headers") and rest:
            name = rest.split(".")[0]
            return ("It is sent to the receiver too: create an organization secret (Secrets) "
                    f'and send it with "secret_headers": {{"{name}": {{"secret": "<name>"}}}} '
                    "instead.")
        if root in URL_KEYS:
            return ("It is sent to the receiver too: create an organization secret (Secrets) "
                    'holding the whole URL and name it with "url_secret" instead.')
        return ("An http step sends an organization secret only in a header "
                '("secret_headers") or as its whole URL ("url_secret"), never in its body: '
                "create a secret (Secrets) and send it one of those ways, or remove it.")

    def config_shown(self, config: dict) -> dict:
        """Also a credential header's (or the body's) expression that holds a constant that
        may be a credential, and a `secret_headers` prefix that holds one (steps saved
        before `validate_stored` refused them)."""
        shown = super().config_shown(config)
        if not isinstance(config, dict):
            return shown
        headers = config.get("headers")
        if isinstance(headers, dict) and isinstance(shown.get("headers"), dict):
            shown["headers"] = {name: "REDACTED" if typed_credential(headers[name], name)
                                else expression for name, expression in shown["headers"].items()}
        if typed_credential(config.get("body")):
            shown["body"] = "REDACTED"
        secrets = shown.get("secret_headers")
        if isinstance(secrets, dict):
            shown["secret_headers"] = {
                name: {**ref, "prefix": "REDACTED"} if isinstance(ref, dict) and
                prefix_holds_credential(ref.get("prefix")) else ref
                for name, ref in secrets.items()}
        return shown

    def _validate_url_secret(self, ref: Any) -> None:
        try:
            reference_parse(ref)
        except ValueError as exc:
            raise ValidationError({"config": f"url_secret {exc}: the URL is never stored in "
                                             "the step."}) from None
        if "prefix" in ref:
            raise ValidationError({"config": 'url_secret takes no "prefix": the secret holds '
                                             "the whole URL."})

    def _validate_secrets(self, secrets: Any) -> None:
        """Shape only: whether each reference resolves in the org is `validate_references`."""
        if not isinstance(secrets, dict):
            raise ValidationError({"config": "secret_headers must be an object."})
        for name, ref in secrets.items():
            _header_name_validate(name, "secret_headers")
            try:
                reference_parse(ref)
            except ValueError as exc:
                raise ValidationError({"config": f"secret_headers.{name} {exc}: the value "
                                                 "is never stored in the step."}) from None

    def validate_references(self, config: dict, *, org_id: Any) -> None:
        # A url_expression's or a url_secret's host is only known at run time.
        url = config.get("url")
        problems = [f"secret_headers.{name}: {problem}"
                    for name, ref in config.get("secret_headers", {}).items()
                    if (problem := reference_problem(org_id=org_id, ref=ref, url=url))]
        if "url_secret" in config and (
                problem := reference_problem(org_id=org_id, ref=config["url_secret"])):
            problems.insert(0, f"url_secret: {problem}")
        if problems:
            raise ValidationError({"config": problems})

    def _request(self, ctx: StepContext) -> tuple[str, str, dict, Any, tuple] | Fail:
        """(method, url, headers, body, what the output must not show) or a Fail."""
        config = ctx.config
        url = None
        hidden: set[str] = set()
        if "url_secret" in config:
            try:
                url = url_reference_resolve(org_id=ctx.org_id, ref=config["url_secret"])
            except SecretUnavailable as exc:
                return Fail(exc.code, f"url_secret: {exc.message}")
            hidden.update(url_hidden_parts(url))  # what url_redact hides of the secret URL
        try:
            if url is None:
                url = config.get("url") or expression_search(config["url_expression"], ctx.data)
            headers = {name: expression_search(expr, ctx.data)
                       for name, expr in config.get("headers", {}).items()}
            body = expression_search(config["body"], ctx.data) if "body" in config else None
        except JMESPathError as exc:
            return Fail("bad_expression", expression_error(exc))
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return Fail("bad_request", "The URL expression did not give an http(s) URL.")
        headers = {k: v if isinstance(v, str) else json.dumps(v)
                   for k, v in headers.items() if v is not None}
        credentials = [part for name, value in headers.items() if credential_named(name)
                       for part in credential_parts(value)]  # whatever their source
        credentials += _body_credentials(body)
        hidden.update(part for credential in credentials
                      for part in secret_sent_parts(credential))
        # Resolved against the final URL, so host binding covers url_expression too.
        for name, ref in config.get("secret_headers", {}).items():
            try:
                headers[name] = reference_resolve(org_id=ctx.org_id, ref=ref, url=url)
            except SecretUnavailable as exc:
                return Fail(exc.code, f"Header {name}: {exc.message}")
            hidden.update(secret_sent_parts(headers[name], ref.get("prefix", "")))
        return (config.get("method", "GET").upper(), url, headers, body,
                tuple(sorted(hidden, key=len, reverse=True)))

    def execute(self, ctx: StepContext) -> Outcome:
        if failure := config_failure(self, ctx.config) or auxot_key_failure(
                ctx.config, "the receiver"):
            return failure
        built = self._request(ctx)
        if isinstance(built, Fail):
            return built
        method, url, headers, body, hidden = built
        # Never wait past the step's lease: another worker would take the item over.
        timeout = min(ctx.config.get("timeout_seconds", settings.AUXOT_HTTP_TIMEOUT_SECONDS),
                      ctx.timeout_seconds)
        response = send(ctx, method, url, headers=headers, body=body, timeout=timeout,
                         codes=self.retry_codes, purpose="http")
        if not isinstance(response, requests.Response):
            return response
        if retryable(response):
            return retry(ctx, f"HTTP {response.status_code} from {method} {url_redact(url)}",
                          self.retry_codes, retry_after(response, ctx.now))
        if response.status_code >= 400:
            return Fail("http_error", f"{method} {url_redact(url)} answered HTTP "
                                      f"{response.status_code} (not retried: a client error).")
        wanted = [h.lower() for h in ctx.config.get("response_headers", [])]
        interesting = set(DEFAULT_RESPONSE_HEADERS) | set(wanted)
        # A receiver may quote what it was sent (a redirect to https, an error page, an
        # echo): a secret's value or the url_secret's token would reach the output, which
        # every key holder polling the item reads.
        picked = {k.lower(): parts_redacted(text_storable(v), hidden)
                  for k, v in response.headers.items() if k.lower() in interesting}
        return Complete({"status": response.status_code, "headers": picked,
                         **response_body(response, hidden)})
