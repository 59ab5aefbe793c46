"""Helpers several step kinds share: expression checks, config failures, retries, the send,
an answer's text.

Retries never hold a worker: a retryable failure returns Wait(..., "backoff") with
`retry: True` in its detail, and the engine starts a new attempt when it comes due.
"""

import functools
import json
import random
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.visitor
import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from jmespath.exceptions import JMESPathError

from auxot.http import retry_after_seconds
from auxot.outbound import RefusedDestination, outbound_request, url_redact
from auxot.storable import text_decode, text_storable, value_check
from auxot.timefmt import iso
from workflows.kinds.base import Fail, Outcome, RetryCodes, StepContext, StepKind, Wait
from workflows.kinds.typed import AUXOT_KEY, typed_credentials

SECRET_SHOWN_BELOW = 4  # a secret shorter than this is not cut from answers (it would garble)


def secret_sent_parts(sent: str, prefix: str = "") -> tuple[str, ...]:
    """What an answer must not show of a secret sent as `sent` (a header's value, `prefix`
    then the secret): the secret as sent and as it would appear in a URL; nothing for one
    too short to cut without garbling the answer."""
    value = sent[len(prefix):] if prefix and sent.startswith(prefix) else sent
    if len(value) < SECRET_SHOWN_BELOW:
        return ()
    return (value, quote(value, safe=""))


CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\";\s]+)", re.IGNORECASE)


# An expression is parsed before its budget counts anything, and jmespath keeps only 128
# parsed ones: a megabyte of `a.b.b…` took a second to parse at every run, and nesting past
# Python's recursion limit raised RecursionError (a 500 in the admin).
EXPRESSION_MAX_CHARS = 20_000


def _expression_compiled(expression: str) -> Any:
    """jmespath's parse, within EXPRESSION_MAX_CHARS and without RecursionError."""
    if len(expression) > EXPRESSION_MAX_CHARS:
        raise ExpressionTooLarge(f"the expression is longer than {EXPRESSION_MAX_CHARS:,} "
                                 "characters")
    try:
        return jmespath.compile(expression)
    except RecursionError:
        raise ExpressionTooLarge("the expression is nested too deeply") from None


def expression_check(expression: Any, what: str) -> None:
    """Raise ValidationError unless `expression` is a string jmespath compiles."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError({"config": f"{what} must be a jmespath expression (a string)."})
    try:
        _expression_compiled(expression)
    except ExpressionTooLarge as exc:
        raise ValidationError({"config": f"{what}: {exc}."}) from None
    except JMESPathError as exc:
        raise ValidationError({"config": f"{what}: invalid jmespath expression: {exc}"}) from None


# An expression runs on the worker, over a caller's input, and jmespath has no limits of its
# own: `[@, @][]` doubles a list at each stage, `join` a string, `to_string` writes out a
# value whose parts are shared, projections over nested shared lists visit every leaf, one
# `sort` or slice handles a whole list, and Python's `==` on two values built apart walks
# every leaf. So one run may visit so many nodes, no value along the way may hold more than
# so many items, and every item a node is handed (a function's list or string arguments,
# what it flattens) or builds counts against one budget, as does each pair of containers an
# equality walks (once). Its result, written as JSON, may be as large as a step's output
# (AUXOT_STEP_OUTPUT_MAX_CHARS).
EXPRESSION_MAX_VISITS = 1_000_000
EXPRESSION_MAX_ITEMS = 4_000_000  # a list's or object's entries, or a string's characters
EXPRESSION_MAX_WORK = 20_000_000  # items handled by every node of one run, added up


class ExpressionTooLarge(JMESPathError):
    """The expression went past the limits above (a `bad_expression`)."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0


class _Functions(jmespath.functions.Functions):
    interpreter: "_Interpreter"  # whose budget `contains` charges

    @jmespath.functions.signature({"types": ["array", "string"]}, {"types": []})
    def _func_contains(self, subject, search):
        if isinstance(subject, str):
            return search in subject
        # jmespath's is Python's `in`: the same object, or `==` without the comparator's rule
        # that true is not 1.
        return any(element is search or self.interpreter.equal(element, search, as_in=True)
                   for element in subject)

    @jmespath.functions.signature({"types": []})
    def _func_to_string(self, arg):
        if isinstance(arg, str):
            return arg
        _written_within_limit(arg, "to_string: the value")
        return super()._func_to_string(arg)

    @jmespath.functions.signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator, array):
        if sum(map(len, array)) + len(separator) * len(array) > EXPRESSION_MAX_ITEMS:
            raise ExpressionTooLarge(f"join: the result would pass {EXPRESSION_MAX_ITEMS:,} "
                                     "characters")
        return separator.join(array)


class _Interpreter(jmespath.visitor.TreeInterpreter):
    def __init__(self):
        super().__init__(jmespath.Options(custom_functions=_Functions()))
        self._functions.interpreter = self
        self._visits = 0
        self._work = 0

    def equal(self, left: Any, right: Any, *, as_in: bool = False) -> bool:
        """`left == right` as jmespath means it, each pair of containers compared once.
        Python's `==` compares two values built apart leaf by leaf: `@ | [@, @] | ...` has k
        distinct lists and 2^k leaves, and two of them built by separate stages took time
        doubling with each stage. Here a pair of containers already met is not walked again,
        every container walked is charged to the budget, and nesting costs no recursion.
        `as_in`: as Python's `in` compares (contains), without the comparator's rule that
        true is not 1."""
        if not as_in and jmespath.visitor._is_special_number_case(left, right):
            return False
        if not isinstance(left, list | dict) and not isinstance(right, list | dict):
            return left == right  # two scalars: no identity shortcut (NaN is not NaN)
        pending = [(left, right)]
        met: set[tuple[int, int]] = set()  # pairs walked (or being walked): an unequal
        # pair anywhere answers False at once, so a pair met again can be taken as equal
        while pending:
            a, b = pending.pop()
            if a is b:
                continue
            if isinstance(a, list | dict) or isinstance(b, list | dict):
                if type(a) is not type(b) or len(a) != len(b):
                    return False
                pair = (id(a), id(b))
                if pair in met:
                    continue
                met.add(pair)
                self._charge(len(a))
                if isinstance(a, list):
                    pending.extend(zip(a, b, strict=True))
                else:
                    for key, value in a.items():
                        if key not in b:
                            return False
                        pending.append((value, b[key]))
            elif a != b:
                return False
        return True

    def visit_comparator(self, node, value):
        if node["value"] not in ("eq", "ne"):
            return super().visit_comparator(node, value)
        same = self.equal(self.visit(node["children"][0], value),
                          self.visit(node["children"][1], value))
        return same if node["value"] == "eq" else not same

    def _charge(self, items: int) -> None:
        self._work += items
        if self._work > EXPRESSION_MAX_WORK:
            raise ExpressionTooLarge(f"the expression handled more than "
                                     f"{EXPRESSION_MAX_WORK:,} items")

    def visit(self, node, *args, **kwargs):
        self._visits += 1
        if self._visits > EXPRESSION_MAX_VISITS:
            raise ExpressionTooLarge(f"the expression took more than {EXPRESSION_MAX_VISITS:,} "
                                     "steps")
        result = super().visit(node, *args, **kwargs)
        size = _size(result)
        if size > EXPRESSION_MAX_ITEMS:
            raise ExpressionTooLarge(f"a value grew past {EXPRESSION_MAX_ITEMS:,} items or "
                                     "characters while the expression ran")
        if size and node["type"] not in ("field", "identity", "current", "literal", "index"):
            self._charge(size)  # built (or copied) here; a read of existing data is free
        return result

    def visit_flatten(self, node, value):
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        total = sum(len(element) if isinstance(element, list) else 1 for element in base)
        if total > EXPRESSION_MAX_ITEMS:  # counted before anything is copied
            raise ExpressionTooLarge(f"a flatten would build {total:,} items, past "
                                     f"{EXPRESSION_MAX_ITEMS:,}")
        merged: list = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    def visit_function_expression(self, node, value):
        args = [self.visit(child, value) for child in node["children"]]
        self._charge(sum(_size(arg) for arg in args))  # sort, contains, max: a pass each
        return self._functions.call_function(node["value"], args)


def _written_within_limit(value: Any, what: str) -> int:
    """ExpressionTooLarge if `value` is larger than a step's output as JSON; else its length
    as JSON (0 if it cannot be written at all, NaN say: the step's output check says so)."""
    problem, size = value_check(value, limit=settings.AUXOT_STEP_OUTPUT_MAX_CHARS)
    if problem and problem.startswith("is larger than"):
        raise ExpressionTooLarge(f"{what} {problem}")
    return size


_interpreters = threading.local()  # one per thread, reused: it keeps its method cache
_budgets = threading.local()  # the step's budget while one runs (expression_budget)


@dataclass
class _Budget:
    visits: int = 0
    work: int = 0
    written: int = 0  # characters the step's results take as JSON, added up


@contextmanager
def expression_budget():
    """One budget for every expression a step runs: an agent prompt's placeholders, an http
    step's URL, headers and body share the limits above (steps visited, items handled) and
    their results together must fit a step output's size, so N placeholders do not get N
    budgets. The engine runs each step inside one; nested, the outer one counts."""
    if getattr(_budgets, "one", None) is not None:
        yield
        return
    _budgets.one = _Budget()
    try:
        yield
    finally:
        _budgets.one = None


def expression_search(expression: str, data: Any) -> Any:
    """`jmespath.search`, within the limits above (ExpressionTooLarge, a JMESPathError). A
    result can be written as JSON within a step output's limit (inside expression_budget:
    all the step's results together): what uses it (an output, a request body, a header, a
    prompt) writes it out."""
    interpreter = getattr(_interpreters, "one", None)
    if interpreter is None:
        interpreter = _interpreters.one = _Interpreter()
    budget = getattr(_budgets, "one", None)
    interpreter._visits, interpreter._work = (budget.visits, budget.work) if budget else (0, 0)
    try:
        result = interpreter.visit(_expression_compiled(expression).parsed, data)
    finally:
        if budget:
            budget.visits, budget.work = interpreter._visits, interpreter._work
    size = _written_within_limit(result, "the result")
    if budget:
        budget.written += size
        limit = settings.AUXOT_STEP_OUTPUT_MAX_CHARS
        if budget.written > limit:
            raise ExpressionTooLarge(f"the step's expression results together are larger "
                                     f"than {limit:,} characters as JSON")
    return result


def expression_error(exc: JMESPathError) -> str:
    """An expression's error as a step's message: jmespath's type error quotes the whole
    offending value (megabytes, or a NUL the database refuses); name its type instead."""
    if isinstance(exc, jmespath.exceptions.JMESPathTypeError):
        return (f"jmespath error: in function {exc.function_name}(), expected one of "
                f"{exc.expected_types}, received {exc.actual_type!r}")
    return f"jmespath error: {text_storable(str(exc))[:500]}"


def config_failure(kind: StepKind, config: dict) -> Fail | None:
    """The config checked again at run time (it may predate a rule): a Fail, or None if fine."""
    try:
        kind.validate_config(config)
    except ValidationError as exc:
        errors = exc.error_dict.values() if hasattr(exc, "error_dict") else [exc.error_list]
        codes = {error.code for group in errors for error in group}
        return Fail("ssrf_refused" if "ssrf_refused" in codes else "bad_config",
                    "; ".join(exc.messages))
    return None


@functools.lru_cache(maxsize=512)
def _auxot_key_paths(config_json: str) -> tuple[str, ...]:
    """By the config's text: a step runs with the same config many times, and the walk
    (every string, every expression's literals, every format) cost 0.2-0.5 ms a step."""
    return tuple(path for path, kinds in typed_credentials(json.loads(config_json)).items()
                 if AUXOT_KEY in kinds)


def auxot_key_failure(config: dict, where: str) -> Fail | None:
    """An Auxot API key typed into a step that sends its config to another host (saved
    before `validate_stored` refused it): the step fails with `auxot_key_in_config` and
    sends nothing. Other credentials typed in are still sent (checked at save, never at
    run); this one would hand whoever receives it (`where`) this server's API as the key's
    owner, and the key may be recognised for sure (its checksum)."""
    paths = _auxot_key_paths(json.dumps(config, sort_keys=True, default=str))
    if not paths:
        return None
    return Fail("auxot_key_in_config", (
        f"{', '.join(paths)}: an Auxot API key is typed into the step; nothing was sent (it "
        f"would give {where} this server's API). Revoke the key (every viewer of the "
        "workflow could read it), remove it from the step, and send a new one, if the "
        'receiver needs it, from an organization secret ("secret_headers").'))


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the server's Retry-After."""
    base = settings.AUXOT_RETRY_BACKOFF_BASE_SECONDS
    cap = settings.AUXOT_RETRY_BACKOFF_CAP_SECONDS
    delay = random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.AUXOT_RETRY_AFTER_MAX_SECONDS))
    return delay


def retries_exhausted(codes: RetryCodes, attempts: int, reason: str) -> Fail:
    """The step's failure once its last attempt failed with `reason`."""
    return Fail(codes.exhausted, f"Gave up after {attempts} attempts; last: {reason}.")


def retry(ctx: StepContext, reason: str, codes: RetryCodes, retry_after: float | None = None
          ) -> Outcome:
    """Wait for the next attempt, or Fail with `codes.exhausted` once the attempts are used
    up. The wait's detail names the attempt's own code (`codes.attempt`): the engine stores
    it on the attempt when the backoff runs out, and the poll shows it meanwhile."""
    if ctx.attempt >= ctx.max_attempts:
        return retries_exhausted(codes, ctx.attempt, reason)
    until = ctx.now + timedelta(seconds=backoff_seconds(ctx.attempt, retry_after))
    return Wait(until, "backoff", {
        "retry": True, "code": codes.attempt, "reason": reason, "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts, "until": iso(until),
    })


def retry_after(response: requests.Response, now: datetime) -> float | None:
    return retry_after_seconds(response.headers.get("Retry-After"), now=now)


def retryable(response: requests.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def send(ctx: StepContext, method: str, url: str, *, headers: dict, body: Any,
         timeout: float, codes: RetryCodes, purpose: str) -> requests.Response | Outcome:
    """One request through the outbound guard (no redirects; `timeout` bounds the whole
    exchange). Returns the response, or the outcome for a refusal or transport failure."""
    headers = {**headers, "Idempotency-Key": ctx.idempotency_key}
    try:
        return outbound_request(method, url, purpose=purpose, headers=headers, json=body,
                                timeout=timeout)
    except RefusedDestination as exc:  # nothing was sent; retrying cannot help
        return Fail("ssrf_refused" if exc.code == "ssrf_refused" else "bad_request", str(exc))
    except (requests.ConnectionError, requests.Timeout) as exc:
        return retry(ctx, f"{type(exc).__name__} calling {method} {url_redact(url)}", codes)
    except requests.RequestException as exc:
        return Fail("http_error", f"{method} {url_redact(url)}: {type(exc).__name__}")


def response_text(response: requests.Response) -> str:
    """A server's answer as text the database stores (auxot/storable.py): decoded with the
    charset its Content-Type declares, else UTF-8 (never guessed from the bytes: a guess
    costs time on a large answer and differs between answers); a byte order mark dropped."""
    match = CHARSET.search(response.headers.get("Content-Type", ""))
    text = text_decode(response.content, match.group(1) if match else None)
    return text.removeprefix("\ufeff")
