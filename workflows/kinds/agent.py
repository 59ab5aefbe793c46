"""`agent`: one chat-completions call to an OpenAI-compatible provider of the organization."""

import json
import math
from datetime import timedelta
from typing import Any

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from jmespath.exceptions import JMESPathError

from auxot.outbound import parts_redacted
from auxot.secrets import SecretUnavailable, reference_resolve
from auxot.storable import NotJSON, Unstorable, json_loads
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
    UNCAPPED,
    Complete,
    Fail,
    Outcome,
    RetryCodes,
    RunLimits,
    StepContext,
    StepKind,
    Wait,
)
from workflows.kinds.typed import template_fields

# An item in a provider's line looks at its place again now and then (a dead holder's lease
# runs out with nobody to wake the next); a slot given back wakes the next ones at once.
# Every item looked again every AUXOT_PROVIDER_RECHECK_SECONDS, each look counting the line:
# ten thousand items behind a provider with a limit of 1 (a tenant's own, slow) took every
# worker, for every tenant. An item looks again in proportion to the turns ahead of it.
PROVIDER_RECHECK_MAX_SECONDS = 300


def provider_recheck_seconds(detail: dict) -> float:
    """When an item `detail["ahead"]` places back in a line served `detail["limit"]` at a
    time looks again: every AUXOT_PROVIDER_RECHECK_SECONDS at the front, once per turn
    ahead of it further back, at most every PROVIDER_RECHECK_MAX_SECONDS."""
    every = settings.AUXOT_PROVIDER_RECHECK_SECONDS
    turns = int(detail.get("ahead") or 0) // max(1, int(detail.get("limit") or 1))
    return min(max(every, PROVIDER_RECHECK_MAX_SECONDS), every * max(1, turns))


def provider_recheck_ahead_counted(limit: int) -> int:
    """How many places ahead `provider_recheck_seconds` tells apart in a line served `limit`
    at a time: from there back an item looks again every PROVIDER_RECHECK_MAX_SECONDS
    anyway, so a look counts the line no further (`ahead_at_least` past it)."""
    every = settings.AUXOT_PROVIDER_RECHECK_SECONDS
    if every <= 0:
        return max(1, limit)
    return max(1, limit) * math.ceil(max(every, PROVIDER_RECHECK_MAX_SECONDS) / every)


def render_template(template: str, data: dict[str, Any]) -> str:
    """`{{ <jmespath> }}` placeholders over {input, previous, steps}; nothing else runs.

    Strings are inserted as they are; other values as JSON. No attribute access, no code:
    a template can only read the data the step is given.
    """

    parts, done = [], 0
    for start, end, expression in template_fields(template):
        value = expression_search(expression, data)
        parts += [template[done:start],
                  value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)]
        done = end
    return "".join([*parts, template[done:]])


def _check_template(template: Any, what: str) -> None:
    if not isinstance(template, str) or not template.strip():
        raise ValidationError({"config": f"{what} must be a non-empty string."})
    for _, _, expression in template_fields(template):
        shown = expression if len(expression) <= 60 else expression[:60] + "…"
        expression_check(expression, f"{what} placeholder {{{{ {shown} }}}}")


def _answer_json(content: Any) -> Any:
    """The model's answer (`json_output`) as JSON the database stores exactly as given."""
    if not isinstance(content, str):
        raise NotJSON("the answer is not a string")
    return json_loads(content)


class Agent(StepKind):
    """config: {"provider": "<name>", "prompt": "... {{ input.text }} ...",
    "system": "...", "json_output": false, "temperature": 0.2, "max_tokens": 500}

    The provider comes from `ctx.providers` (the engine's gate over the organization's
    providers): it holds a slot of the provider's concurrency limit around the call.
    """

    name = "agent"
    label = "Agent (AI provider)"
    uses_providers = True
    # Sent to the provider as saved. The provider's own timeout is cut at the step's
    # (validate_limits).
    numeric_settings = {"temperature": UNCAPPED, "max_tokens": UNCAPPED}
    retry_codes = RetryCodes(attempt="provider_unavailable", exhausted="provider_unavailable")

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

    def validate_limits(self, config: dict, limits: RunLimits) -> None:
        """Also the provider's timeout: its call never waits past this step's timeout."""
        super().validate_limits(config, limits)
        seconds = limits.provider_timeouts.get(config["provider"])
        if seconds is not None and seconds > limits.step_timeout:
            raise ValidationError({"config": (
                f"provider: '{config['provider']}' waits up to {seconds:g} seconds for an "
                f"answer (its timeout), but this step's call is cut at "
                f"{limits.step_timeout:g} seconds, the step's timeout (its Timeout seconds, "
                f"else AUXOT_STEP_TIMEOUT_SECONDS). Give the step a timeout of at least "
                f"{min(seconds, limits.step_timeout_max):g} seconds, or lower the provider's "
                "timeout.")})

    def typed_credential_advice(self, path: str) -> str:
        if path.split(".")[0] not in ("prompt", "system"):
            return super().typed_credential_advice(path)
        return ("The AI provider receives it too, and an agent step cannot fill its prompt "
                "or system text from an organization secret: remove it. The provider's own "
                "API key belongs in the provider's API key secret (AI providers).")

    def execute(self, ctx: StepContext) -> Outcome:
        if failure := config_failure(self, ctx.config) or auxot_key_failure(
                ctx.config, "the AI provider"):
            return failure
        gate = ctx.providers
        provider = gate.find(ctx.config["provider"]) if gate is not None else None
        if provider is None:
            return Fail("provider_missing", f"No active provider named "
                                            f"'{ctx.config['provider']}'.")
        slot = gate.acquire(provider, ahead_counted=provider_recheck_ahead_counted(
            int(provider.concurrency_limit)))
        if not slot.granted:
            detail = slot.detail()
            return Wait(ctx.now + timedelta(seconds=provider_recheck_seconds(detail)),
                        "provider", detail)
        try:
            return self._call(ctx, provider)
        finally:
            gate.release(provider)

    def _messages(self, ctx: StepContext) -> list[dict] | Fail:
        try:
            messages = [{"role": "user", "content": render_template(ctx.config["prompt"],
                                                                    ctx.data)}]
            if "system" in ctx.config:
                messages.insert(0, {"role": "system",
                                    "content": render_template(ctx.config["system"], ctx.data)})
        except JMESPathError as exc:
            return Fail("bad_expression", f"prompt placeholder: {expression_error(exc)}")
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
        hidden: tuple[str, ...] = ()
        ref = provider.api_key_reference
        if ref is not None:
            try:
                headers["Authorization"] = reference_resolve(org_id=provider.org_id, ref=ref,
                                                               url=url)
            except SecretUnavailable as exc:
                return Fail(exc.code, f"Provider '{provider.name}' API key: {exc.message}")
            hidden = secret_sent_parts(headers["Authorization"], ref.get("prefix", ""))
        response = send(ctx, "POST", url, headers=headers, body=payload,
                         timeout=min(provider.timeout_seconds, ctx.timeout_seconds),
                         codes=self.retry_codes, purpose="agent")
        if not isinstance(response, requests.Response):
            return response
        if retryable(response):
            return retry(ctx, f"provider '{provider.name}' answered HTTP "
                               f"{response.status_code}", self.retry_codes,
                          retry_after(response, ctx.now))
        if response.status_code >= 300:
            return Fail("provider_error", f"Provider '{provider.name}' answered HTTP "
                                          f"{response.status_code}" + (
                                              " (redirects are not followed)."
                                              if response.status_code < 400 else "."))
        return self._output(ctx, provider, response, hidden)

    def _output(self, ctx: StepContext, provider, response: requests.Response,
                hidden: tuple[str, ...] = ()) -> Outcome:
        """The reply meets the `http` step's rule (auxot/storable.py): its text is decoded
        with replacement characters, and it must be JSON the database stores exactly as sent;
        so must the model's answer with `json_output`. Anything else is `bad_agent_output`:
        the step's result can always be recorded. The provider's API key, should the reply
        quote it (a proxy's error page, a model told to repeat its headers), is REDACTED,
        as in an `http` step's output: the organization's viewers read step outputs."""
        try:
            body = json_loads(response_text(response))
        except (NotJSON, Unstorable) as exc:
            return Fail("bad_agent_output", f"Provider '{provider.name}' did not answer with "
                                            f"JSON that can be stored: {exc}.")
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return Fail("bad_agent_output", f"Provider '{provider.name}' did not answer in the "
                                            "chat-completions shape.")
        output = {"content": content, "model": body.get("model", provider.model),
                  "finish_reason": choice.get("finish_reason"), "usage": body.get("usage")}
        if ctx.config.get("json_output"):
            try:
                output["json"] = _answer_json(content)
            except (NotJSON, Unstorable) as exc:
                return Fail("bad_agent_output", "json_output is on but the model's answer is "
                                                f"not JSON that can be stored: {exc}.")
        return Complete(parts_redacted(output, hidden))
