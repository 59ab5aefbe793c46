"""Step kinds that reach outside: `http`, `approval` (a person) and `agent` (an AI provider).

Retries never hold a worker: a retryable failure returns Wait(..., "backoff") with
`retry: True` in its detail, and the engine starts a new attempt when it comes due.
"""

import json
import random
import re
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import jmespath
import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_datetime
from jmespath.exceptions import JMESPathError

from auxot.outbound import RefusedDestination, outbound_request, url_check
from auxot.secrets import SecretUnavailable, reference_parse, reference_problem, reference_resolve
from auxot.timefmt import iso
from workflows.steps import Complete, Fail, Outcome, StepContext, StepKind, Wait

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an RFC 9110 token
DEFAULT_RESPONSE_HEADERS = ["content-type", "location", "etag", "retry-after"]
NO_DEADLINE = timedelta(days=3650)
MAX_TEXT = 65536


def _compile(expression: Any, what: str) -> None:
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError({"config": f"{what} must be a jmespath expression (a string)."})
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValidationError({"config": f"{what}: invalid jmespath expression: {exc}"}) from None


def _retry_after(response: requests.Response, now: datetime) -> float | None:
    raw = response.headers.get("Retry-After", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return float(raw)
    try:
        return max(0.0, (parsedate_to_datetime(raw) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the server's Retry-After."""
    base = settings.AUXOT_RETRY_BACKOFF_BASE_SECONDS
    cap = settings.AUXOT_RETRY_BACKOFF_CAP_SECONDS
    delay = random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.AUXOT_RETRY_AFTER_MAX_SECONDS))
    return delay


def _retry(ctx: StepContext, reason: str, code: str, retry_after: float | None = None
           ) -> Outcome:
    if ctx.attempt >= ctx.max_attempts:
        return Fail(code, f"Gave up after {ctx.attempt} attempts; last: {reason}.")
    until = ctx.now + timedelta(seconds=backoff_seconds(ctx.attempt, retry_after))
    return Wait(until, "backoff", {
        "retry": True, "reason": reason, "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts, "until": iso(until),
    })


def _send(ctx: StepContext, method: str, url: str, *, headers: dict, body: Any,
          timeout: float, code: str, purpose: str) -> requests.Response | Outcome:
    """One request through the outbound guard (no redirects; `timeout` bounds the whole
    exchange). Returns the response, or the outcome for a refusal or transport failure."""
    headers = {**headers, "Idempotency-Key": ctx.idempotency_key}
    try:
        return outbound_request(method, url, purpose=purpose, headers=headers, json=body,
                                timeout=timeout)
    except RefusedDestination as exc:  # nothing was sent; retrying cannot help
        return Fail("bad_request" if exc.code == "bad_url" else "ssrf_refused", str(exc))
    except (requests.ConnectionError, requests.Timeout) as exc:
        return _retry(ctx, f"{type(exc).__name__} calling {method} {_safe_url(url)}", code)
    except requests.RequestException as exc:
        return Fail("http_error", f"{method} {_safe_url(url)}: {type(exc).__name__}")


def _safe_url(url: str) -> str:
    return url.split("?", 1)[0]  # a query string may carry tokens: keep it out of errors


def _retryable(response: requests.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        return {"json": response.json()}
    except ValueError:
        return {"text": response.text[:MAX_TEXT]}


def _url_validate(url: str) -> None:
    """The outbound policy at save time, so an admin sees a refused URL before it runs."""
    try:
        url_check(url, purpose="http")
    except RefusedDestination as exc:
        raise ValidationError({"config": ValidationError(f"url: {exc}", code=exc.code)}
                              ) from None


def _config_failure(exc: ValidationError) -> Fail:
    codes = {error.code for errors in exc.error_dict.values() for error in errors} \
        if hasattr(exc, "error_dict") else {error.code for error in exc.error_list}
    code = "ssrf_refused" if "ssrf_refused" in codes else "bad_config"
    return Fail(code, "; ".join(exc.messages))


class Http(StepKind):
    """config:
    {"method": "POST", "url": "https://..." | "url_expression": "<jmespath>",
     "headers": {"X-Ticket": "<jmespath>"}, "body": "<jmespath>",
     "secret_headers": {"Authorization": {"secret": "CRM_TOKEN", "prefix": "Bearer "}},
     "timeout_seconds": 10, "response_headers": ["etag"]}
    """

    def validate_config(self, config: dict) -> None:
        method = config.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ValidationError({"config": f"method must be one of {sorted(METHODS)}."})
        if ("url" in config) == ("url_expression" in config):
            raise ValidationError({"config": 'Give exactly one of "url" or "url_expression".'})
        if "url" in config:
            url = config["url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValidationError({"config": "url must be an absolute http(s) URL."})
            _url_validate(url)
        else:
            _compile(config["url_expression"], "url_expression")
        headers = config.get("headers", {})
        if not isinstance(headers, dict):
            raise ValidationError({"config": "headers must map names to jmespath expressions."})
        for name, expression in headers.items():
            _compile(expression, f"headers.{name}")
        if "body" in config:
            _compile(config["body"], "body")
        self._validate_secrets(config.get("secret_headers", {}))
        timeout = config.get("timeout_seconds", settings.AUXOT_HTTP_TIMEOUT_SECONDS)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
                0 < timeout <= 600):
            raise ValidationError({"config": "timeout_seconds must be 0 < n <= 600."})
        wanted = config.get("response_headers", [])
        if not isinstance(wanted, list) or not all(isinstance(h, str) for h in wanted):
            raise ValidationError({"config": "response_headers must be a list of names."})

    def _validate_secrets(self, secrets: Any) -> None:
        """Shape only: whether each reference resolves in the org is `validate_references`."""
        if not isinstance(secrets, dict):
            raise ValidationError({"config": "secret_headers must be an object."})
        for name, ref in secrets.items():
            if not HEADER_NAME.match(name):
                raise ValidationError({"config": f"secret_headers: {name!r} is not a header "
                                                 "name."})
            try:
                reference_parse(ref)
            except ValueError as exc:
                raise ValidationError({"config": f"secret_headers.{name} {exc}: the value "
                                                 "is never stored in the step."}) from None

    def validate_references(self, config: dict, *, org_id: Any) -> None:
        url = config.get("url")  # a url_expression's host is only known at run time
        problems = [f"secret_headers.{name}: {problem}"
                    for name, ref in config.get("secret_headers", {}).items()
                    if (problem := reference_problem(org_id=org_id, ref=ref, url=url))]
        if problems:
            raise ValidationError({"config": problems})

    def _request(self, ctx: StepContext) -> tuple[str, str, dict, Any] | Fail:
        config = ctx.config
        try:
            url = config.get("url") or jmespath.search(config["url_expression"], ctx.data)
            headers = {name: jmespath.search(expr, ctx.data)
                       for name, expr in config.get("headers", {}).items()}
            body = jmespath.search(config["body"], ctx.data) if "body" in config else None
        except JMESPathError as exc:
            return Fail("bad_expression", f"jmespath error: {exc}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return Fail("bad_request", "The URL expression did not give an http(s) URL.")
        headers = {k: v if isinstance(v, str) else json.dumps(v)
                   for k, v in headers.items() if v is not None}
        # Resolved against the final URL, so host binding covers url_expression too.
        for name, ref in config.get("secret_headers", {}).items():
            try:
                headers[name] = reference_resolve(org_id=ctx.org_id, ref=ref, url=url)
            except SecretUnavailable as exc:
                return Fail(exc.code, f"Header {name}: {exc.message}")
        return config.get("method", "GET").upper(), url, headers, body

    def execute(self, ctx: StepContext) -> Outcome:
        try:
            self.validate_config(ctx.config)
        except ValidationError as exc:
            return _config_failure(exc)
        built = self._request(ctx)
        if isinstance(built, Fail):
            return built
        method, url, headers, body = built
        # Never wait past the step's lease: another worker would take the item over.
        timeout = min(ctx.config.get("timeout_seconds", settings.AUXOT_HTTP_TIMEOUT_SECONDS),
                      ctx.timeout_seconds)
        response = _send(ctx, method, url, headers=headers, body=body, timeout=timeout,
                         code="http_retries_exhausted", purpose="http")
        if not isinstance(response, requests.Response):
            return response
        if _retryable(response):
            return _retry(ctx, f"HTTP {response.status_code} from {method} {_safe_url(url)}",
                          "http_retries_exhausted", _retry_after(response, ctx.now))
        if response.status_code >= 400:
            return Fail("http_error", f"{method} {_safe_url(url)} answered HTTP "
                                      f"{response.status_code} (not retried: a client error).")
        wanted = [h.lower() for h in ctx.config.get("response_headers", [])]
        interesting = set(DEFAULT_RESPONSE_HEADERS) | set(wanted)
        picked = {k.lower(): v for k, v in response.headers.items() if k.lower() in interesting}
        return Complete({"status": response.status_code, "headers": picked, **_body(response)})


class Approval(StepKind):
    """config: {"instructions": "...", "deadline_seconds": N (optional)}.

    Waits (holding no worker) until `work_item_decide` records a decision in the step's
    state and wakes the item; past the deadline it fails with `approval_timeout`.
    """

    def validate_config(self, config: dict) -> None:
        instructions = config.get("instructions", "")
        if not isinstance(instructions, str):
            raise ValidationError({"config": "instructions must be a string."})
        deadline = config.get("deadline_seconds")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(
                deadline, int | float) or not 0 < deadline <= 90 * 24 * 3600):
            raise ValidationError({"config": "deadline_seconds must be 0 < n <= 90 days."})

    def execute(self, ctx: StepContext) -> Outcome:
        try:
            self.validate_config(ctx.config)
        except ValidationError as exc:
            return Fail("bad_config", "; ".join(exc.messages))
        seconds = ctx.config.get("deadline_seconds")
        deadline = ctx.now + timedelta(seconds=seconds) if seconds else None
        return Wait(deadline or ctx.now + NO_DEADLINE, "approval", {
            "deadline": iso(deadline), "instructions": ctx.config.get("instructions", ""),
        })

    def resume(self, ctx: StepContext) -> Outcome:
        decision = ctx.state.get("decision")
        if decision == "approve":
            return Complete({key: ctx.state.get(key)
                             for key in ("decision", "decided_by", "decided_at", "comment")})
        if decision == "reject":
            comment = ctx.state.get("comment") or "no comment"
            return Fail("rejected", f"Rejected by {ctx.state.get('decided_by')}: {comment}")
        deadline = parse_datetime(ctx.state.get("deadline") or "")
        if deadline is not None and ctx.now >= deadline:
            return Fail("approval_timeout", f"Nobody approved step '{ctx.step_name}' before "
                                            f"its deadline {iso(deadline)}.")
        return Wait(deadline or ctx.now + NO_DEADLINE, "approval", ctx.state)


TEMPLATE_FIELD = re.compile(r"\{\{\s*(.+?)\s*\}\}")


def render_template(template: str, data: dict[str, Any]) -> str:
    """`{{ <jmespath> }}` placeholders over {input, previous, steps}; nothing else runs.

    Strings are inserted as they are; other values as JSON. No attribute access, no code:
    a template can only read the data the step is given.
    """

    def field(match: re.Match) -> str:
        value = jmespath.search(match.group(1), data)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return TEMPLATE_FIELD.sub(field, template)


def _check_template(template: Any, what: str) -> None:
    if not isinstance(template, str) or not template.strip():
        raise ValidationError({"config": f"{what} must be a non-empty string."})
    for match in TEMPLATE_FIELD.finditer(template):
        _compile(match.group(1), f"{what} placeholder {{{{ {match.group(1)} }}}}")


class Agent(StepKind):
    """config: {"provider": "<name>", "prompt": "... {{ input.text }} ...",
    "system": "...", "json_output": false, "temperature": 0.2, "max_tokens": 500}
    """

    def validate_config(self, config: dict) -> None:
        if not isinstance(config.get("provider"), str) or not config["provider"]:
            raise ValidationError({"config": 'An agent needs {"provider": "<name>"}.'})
        _check_template(config.get("prompt"), "prompt")
        if "system" in config:
            _check_template(config["system"], "system")
        if not isinstance(config.get("json_output", False), bool):
            raise ValidationError({"config": "json_output must be true or false."})
        for name in ("temperature", "max_tokens"):
            value = config.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float)):
                raise ValidationError({"config": f"{name} must be a number."})

    def execute(self, ctx: StepContext) -> Outcome:
        from workflows import providers

        try:
            self.validate_config(ctx.config)
        except ValidationError as exc:
            return Fail("bad_config", "; ".join(exc.messages))
        provider = providers.provider_find(org_id=ctx.org_id, name=ctx.config["provider"])
        if provider is None:
            return Fail("provider_missing", f"No active provider named "
                                            f"'{ctx.config['provider']}'.")
        slot = providers.provider_slot_acquire(provider=provider, work_id=ctx.work_id,
                                               now=ctx.now, lease_seconds=ctx.timeout_seconds)
        if not slot.granted:
            return Wait(ctx.now + timedelta(seconds=settings.AUXOT_PROVIDER_RECHECK_SECONDS),
                        "provider", slot.detail())
        try:
            return self._call(ctx, provider)
        finally:
            providers.provider_slot_release(provider=provider, work_id=ctx.work_id)

    def _messages(self, ctx: StepContext) -> list[dict] | Fail:
        try:
            messages = [{"role": "user", "content": render_template(ctx.config["prompt"],
                                                                    ctx.data)}]
            if "system" in ctx.config:
                messages.insert(0, {"role": "system",
                                    "content": render_template(ctx.config["system"], ctx.data)})
        except JMESPathError as exc:
            return Fail("bad_expression", f"prompt placeholder: {exc}")
        return messages

    def _call(self, ctx: StepContext, provider) -> Outcome:
        messages = self._messages(ctx)
        if isinstance(messages, Fail):
            return messages
        payload: dict[str, Any] = {"model": provider.model, "messages": messages}
        for name in ("temperature", "max_tokens"):
            if ctx.config.get(name) is not None:
                payload[name] = ctx.config[name]
        if ctx.config.get("json_output"):
            payload["response_format"] = {"type": "json_object"}
        url = provider.base_url.rstrip("/") + "/chat/completions"
        headers = {}
        ref = provider.api_key_reference
        if ref is not None:
            try:
                headers["Authorization"] = reference_resolve(org_id=provider.org_id, ref=ref,
                                                               url=url)
            except SecretUnavailable as exc:
                return Fail(exc.code, f"Provider '{provider.name}' API key: {exc.message}")
        response = _send(ctx, "POST", url, headers=headers, body=payload,
                         timeout=min(provider.timeout_seconds, ctx.timeout_seconds),
                         code="provider_unavailable", purpose="agent")
        if not isinstance(response, requests.Response):
            return response
        if _retryable(response):
            return _retry(ctx, f"provider '{provider.name}' answered HTTP "
                               f"{response.status_code}", "provider_unavailable",
                          _retry_after(response, ctx.now))
        if response.status_code >= 300:
            return Fail("provider_error", f"Provider '{provider.name}' answered HTTP "
                                          f"{response.status_code}" + (
                                              " (redirects are not followed)."
                                              if response.status_code < 400 else "."))
        return self._output(ctx, provider, response)

    def _output(self, ctx: StepContext, provider, response: requests.Response) -> Outcome:
        try:
            body = response.json()
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Fail("bad_agent_output", f"Provider '{provider.name}' did not answer in the "
                                            "chat-completions shape.")
        output = {"content": content, "model": body.get("model", provider.model),
                  "finish_reason": choice.get("finish_reason"), "usage": body.get("usage")}
        if ctx.config.get("json_output"):
            try:
                output["json"] = json.loads(content)
            except (TypeError, ValueError):
                return Fail("bad_agent_output", "json_output is on but the model's answer is "
                                                "not valid JSON.")
        return Complete(output)
