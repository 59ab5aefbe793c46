"""The /v1/ contract as OpenAPI: doc-only serializers, examples, reusable problem responses.

Views stay small: each operation gets one decorator from here (`trigger_schema`,
`work_item_schema`, or `approval_schema(request=…)`-style factories for POST actions on a work
item, given the view's own InputSerializer). A new /v1/ endpoint without a decorator fails
tests/intakes/test_openapi.py, which checks every /v1/ route against the generated schema.
"""

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers

from auxot.credentials import api_free_text_refusal
from auxot.errors import (
    NOT_FOUND_DETAIL,
    OPS_PROBLEMS,
    PROBLEM_CONTENT_TYPE,
    PROBLEMS,
    ApplicationError,
    problem_body,
)

KEY_FORMAT = (
    "`user.<12 lowercase base32>.<43 URL-safe base64><6 hex checksum>` (personal key, acts as "
    "its user) or `team.…` with the same shape (team key, Business and Enterprise plans, acts "
    "as its team). Send it as `Authorization: Bearer <key>`: the word Bearer, one space, the key."
)
EXAMPLE_WORK_ID = "60c164c7-5a0e-4d3c-9a55-0f4d1c2b9e11"
EXAMPLE_INTAKE_ID = "ed0fc80e-0d51-4c43-8f7a-3d6a8d6c2f10"


def link_trigger_to_poll(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: the trigger's body is required, and an OpenAPI link leads from
    the 202 to the poll of the same work item, so generated clients (and schemathesis'
    stateful phase) can follow trigger -> poll."""
    trigger = result.get("paths", {}).get("/v1/intake/{intake_id}", {}).get("post")
    if trigger and "requestBody" in trigger:
        trigger["requestBody"]["required"] = True  # no body at all is 400 empty_body
    if trigger and "202" in trigger.get("responses", {}):
        trigger["responses"]["202"]["links"] = {"PollWorkItem": {
            "operationId": "work_item_get",
            "parameters": {"intake_id": "$request.path.intake_id",
                           "work_id": "$response.body#/work_id"},
            "description": "Poll the accepted work item.",
        }}
    return result


def only_public_api(endpoints: list) -> list:
    """Preprocessing hook: document the public /v1/ API only (not admin, not the docs)."""
    skip = ("/v1/schema", "/v1/docs", "/v1/problems/")
    return [e for e in endpoints if e[0].startswith("/v1/") and not e[0].startswith(skip)]


class BearerKeyScheme(OpenApiAuthenticationExtension):
    target_class = "apikeys.authentication.BearerKeyAuthentication"
    match_subclasses = True  # intakes.api.IntakeKeyAuthentication: the same header
    name = "apiKey"

    def get_security_definition(self, auto_schema) -> dict:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "user.… | team.…",
                "description": KEY_FORMAT}


# --- bodies -------------------------------------------------------------------------------
class ProblemSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="`/v1/problems/<code>`: dereference it for the title.")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField(help_text="What was wrong and what to do, for a person.")
    code = serializers.ChoiceField(choices=sorted(set(PROBLEMS) - OPS_PROBLEMS),
                                   help_text="Stable, for programs.")
    errors = serializers.JSONField(
        required=False, help_text="`[{pointer, message}]`: what is wrong where (422 "
        "`validation_failed`, and 400 `invalid_request` for an approval or cancel body).")


class TriggerAcceptedSerializer(serializers.Serializer):
    work_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["pending"])
    status_url = serializers.URLField(help_text="The poll URL; also in `Location`.")
    created_at = serializers.DateTimeField()


class _WorkflowRef(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class _CurrentStep(serializers.Serializer):
    position = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()


class _WorkError(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    step = serializers.CharField(allow_null=True)
    step_position = serializers.IntegerField(allow_null=True)


class _CarriedFrom(serializers.Serializer):
    work_id = serializers.UUIDField()
    attempt = serializers.IntegerField()
    url = serializers.CharField(help_text="That item's poll URL.")


class _StepRow(serializers.Serializer):
    position = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.ChoiceField(choices=[
        "pending", "running", "waiting", "retrying", "completed", "failed", "crashed",
        "discarded", "skipped", "carried"])
    attempts = serializers.IntegerField(help_text="Attempts in this item (0 when carried).")
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    next_attempt = serializers.IntegerField(
        required=False, help_text="Only on a `retrying` step: the number of the attempt due "
        "next.")
    next_attempt_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Only on a `retrying` step: when that "
        "attempt is due (the end of the backoff).")
    carried_from = _CarriedFrom(
        required=False, help_text="Only on a replay's `carried` steps: the earlier item whose "
        "attempt produced this output (the step was not run again).")


class WorkItemSerializer(serializers.Serializer):
    work_id = serializers.UUIDField()
    intake_id = serializers.UUIDField(allow_null=True)
    workflow = _WorkflowRef()
    status = serializers.ChoiceField(
        choices=["pending", "running", "completed", "failed"],
        help_text="Only `completed` and `failed` are terminal; terminal states never change.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    output = serializers.JSONField(allow_null=True, help_text="The last step's output "
                                   "(completed only).")
    error = _WorkError(allow_null=True, help_text="Why it failed (failed only).")
    correlation_id = serializers.CharField(allow_null=True)
    current_step = _CurrentStep(allow_null=True)
    waiting_on = serializers.JSONField(
        allow_null=True, help_text="`{kind: queue|worker|delay|approval|provider|backoff, "
        "since, ...}` while not terminal.")
    diagnosis = serializers.CharField(help_text="One sentence: the first thing to check.")
    steps = _StepRow(many=True)
    replay_of = serializers.UUIDField(
        allow_null=True, help_text="On a replay: the failed item it takes forward.")
    resumed_from_step = serializers.IntegerField(
        allow_null=True, help_text="On a replay: the position of the first step it runs (the "
        "steps before it are `carried`).")
    replayed_by = serializers.ListField(
        child=serializers.UUIDField(), help_text="On a failed item: the work ids of its "
        "replays, oldest first (the item itself stays `failed`).")
    callback = serializers.JSONField(
        required=False, allow_null=True,
        help_text="Callback delivery state when the item has a callback URL.")
    redacted_at = serializers.DateTimeField(
        allow_null=True, help_text="When the intake's retention policy removed the input, "
        "output and step results (null: not redacted).")


# --- headers and parameters ----------------------------------------------------------------
PRINTABLE_ASCII = r"^[\x20-\x7e]*\Z"


def _ascii_header(header: str, *, min_length: int, max_length: int, detail: str,
                  description: str) -> serializers.RegexField:
    # One message for every way the value is wrong: callers see the whole rule at once.
    messages = dict.fromkeys(("invalid", "blank", "min_length", "max_length", "null_characters",
                              "surrogate_characters"), detail)
    return serializers.RegexField(
        PRINTABLE_ASCII, label=header, min_length=min_length or None, max_length=max_length,
        required=False, allow_blank=not min_length, trim_whitespace=False,
        error_messages=messages, help_text=description)


class TriggerHeadersSerializer(serializers.Serializer):
    """The trigger's optional headers: the view validates them with this serializer and the
    schema documents them from it (`header_parameters`), so each limit is written once."""

    idempotency_key = _ascii_header(
        "Idempotency-Key", min_length=1, max_length=255,
        detail="Idempotency-Key must be 1 to 255 printable ASCII characters.",
        description="Optional, 1-255 printable ASCII characters. Retrying a POST with the "
        "same key (and body) within 24 h returns the first answer instead of starting the "
        "workflow twice; the same key with another body is 422.")
    correlation_id = _ascii_header(
        "Auxot-Correlation-Id", min_length=0, max_length=200,
        detail="Auxot-Correlation-Id must be printable ASCII and at most 200 characters.",
        description="Optional, printable ASCII, at most 200 characters: stored and echoed as "
        "`correlation_id` in the poll body and the callback.")

    @classmethod
    def from_headers(cls, headers) -> dict:
        """The headers' values by field name (absent ones left out), or the field's 400."""
        # The declared fields' labels, without building a serializer (its deep copy of the
        # fields costs ~0.4 ms): most triggers send neither header and need no validation.
        declared = cls._declared_fields
        data = {name: headers[f.label] for name, f in declared.items() if f.label in headers}
        if not data:
            return {}
        serializer = cls(data=data)
        if not serializer.is_valid():
            first = next(name for name in declared if name in serializer.errors)
            raise ApplicationError(declared[first].error_messages["invalid"])
        # Stored with the work item (a correlation id is echoed in polls and callbacks, shown
        # in the admin): a credential in one is refused as in a body's free text.
        for name, value in serializer.validated_data.items():
            if message := api_free_text_refusal(value, declared[name].label):
                raise ApplicationError(message, code="validation_failed")
        return serializer.validated_data


def header_parameters(serializer_class: type[serializers.Serializer]) -> list[OpenApiParameter]:
    """OpenAPI header parameters from a headers serializer's printable-ASCII fields."""
    params = []
    for field in serializer_class().fields.values():
        low, high = field.min_length or 0, field.max_length
        schema = {"type": "string", "pattern": f"^[\\x20-\\x7e]{{{low},{high}}}$",
                  **({"minLength": low} if low else {}), "maxLength": high}
        params.append(OpenApiParameter(field.label, schema, OpenApiParameter.HEADER,
                                       description=field.help_text))
    return params


def _header(name: str, description: str, **kwargs) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.HEADER,
                            description=description, **kwargs)


INTAKE_ID = OpenApiParameter("intake_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                             description="From Settings → Intakes.")
WORK_ID = OpenApiParameter("work_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                           description="`work_id` of the 202 answer.")
RETRY_AFTER = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[200, 429, 503],
    description="Seconds to wait before the next poll or retry (absent once terminal).")
WWW_AUTHENTICATE = _header("WWW-Authenticate", "`Bearer realm=\"auxot\"` on every 401.",
                           response=[401])
RETRY_AFTER_ERRORS = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[409, 429, 503],
    description="Seconds to wait before retrying; nothing was accepted.")
TRIGGER_HEADERS = [
    *header_parameters(TriggerHeadersSerializer),
    OpenApiParameter(
        "Auxot-Callback-Url", {"type": "string", "maxLength": 2000,
                               "pattern": "^(https?://[^\\s/?#]+[^\\s]*)?$"},
        OpenApiParameter.HEADER,
        description="Optional: overrides the intake's callback URL for this work item; the "
        "finished item is POSTed there, signed (Standard Webhooks). Empty: the intake's "
        "default. A URL that does not parse or that the URL policy refuses (plain http where "
        "not allowed, a private or loopback address, user info) is 422. A host name is "
        "resolved when the callback is sent: one that does not resolve to a public address "
        "fails the attempt."),
    _header("Location", "The poll URL (same as `status_url`).", response=[202]),
    _header("Idempotent-Replayed", "`true` when this 202 replays the answer to an earlier "
            "request with the same `Idempotency-Key` and body.", response=[202]),
    OpenApiParameter("RateLimit-Limit", OpenApiTypes.INT, OpenApiParameter.HEADER,
                     response=[202, 429], description="Accepted triggers allowed per window "
                     "for the tightest of the key's, the intake's and the organization's "
                     "limits (absent on a 202 replayed from an Idempotency-Key)."),
    OpenApiParameter("RateLimit-Remaining", OpenApiTypes.INT, OpenApiParameter.HEADER,
                     response=[202, 429], description="Triggers left in the current window."),
    OpenApiParameter("RateLimit-Reset", OpenApiTypes.INT, OpenApiParameter.HEADER,
                     response=[202, 429], description="Seconds until the window resets."),
]
WAIT = OpenApiParameter(
    "wait", {"type": "number", "minimum": 0, "exclusiveMinimum": True,
             "maximum": settings.AUXOT_LONG_POLL_MAX_SECONDS},
    OpenApiParameter.QUERY, required=False,
    description="Long-poll: answer as soon as the item is terminal, or after this many "
    "seconds with its current state. 0 < wait <= the cap in `Auxot-Wait-Max` (30 by default), "
    "a plain number (`20`, `2.5`, `1e1`) given once; anything else is 400. The server may "
    "answer earlier when it is busy.")
STATE = OpenApiParameter(
    "state", {"type": "string", "pattern": r"^[a-z]{1,16}\.[0-9]{1,9}\.([a-z]{1,16}|-)"
                        r"(\.[a-z]{1,16}\.[0-9]{1,9}\.([a-z0-9]{1,16}|-))?$"},
    OpenApiParameter.QUERY, required=False,
    description="With `wait`: the `Auxot-State` of the last answer you read. The long-poll "
    "then also answers as soon as the item's state is another (at once if it already is): "
    "every change the body shows (status, step, wait, who holds it, attempts, an approval's "
    "decision, a provider line's place by bucket) is seen within a moment, not only the end.")
STATE_HEADER = OpenApiParameter(
    "Auxot-State", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200],
    description="The item's state as one token, `<status>.<step index>.<waiting_on or ->."
    "<phase>.<attempts>.<detail>` (`running.1.backoff.wait.2.-`): treat it as opaque and give "
    "it back as `?state=` with `?wait=`.")
WAIT_MAX = OpenApiParameter(
    "Auxot-Wait-Max", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[200],
    description="The largest `wait` this server accepts: its presence means long-poll works.")
WAIT_REFUSED = OpenApiParameter(
    "Auxot-Wait-Refused", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200],
    description="`busy`: this answer did not wait because the server process already has as "
    "many long-polls waiting as it allows; it is the item's current state, like a plain poll. "
    "Ask again after `Retry-After`.")


# --- problems ------------------------------------------------------------------------------
_EXAMPLE_DETAILS = {
    "invalid_json": "Invalid JSON: duplicate key 'a'.",
    "empty_body": "The body is empty; send {} if the workflow needs no input.",
    "invalid_request": "Auxot-Correlation-Id must be printable ASCII and at most 200 characters.",
    "unauthorized": "Use 'Authorization: Bearer <key>': the word Bearer, one space, then the key.",
    "not_found": NOT_FOUND_DETAIL,
    "payload_too_large": "The body is larger than 1048576 bytes.",
    "unsupported_media_type": "Send the body as JSON with 'Content-Type: application/json'.",
    "rate_limited": "Too many requests for this key; retry after Retry-After seconds.",
    "idempotency_in_flight": "A request with this Idempotency-Key is still being processed.",
    "idempotency_key_reused": "This Idempotency-Key was used with a different body.",
    "request_timeout": "The request body did not arrive within 10 seconds; send it at once "
                       "(through a buffering proxy) and retry.",
    "length_required": "Send a Content-Length header or a chunked body through gunicorn.",
    "database_unavailable": "The database is unavailable; nothing was accepted. Retry later.",
}
_STATUS_TEXT = {
    400: "Bad request: the body, a header or a parameter is invalid.",
    401: "Missing, malformed, unknown, revoked or expired key (`WWW-Authenticate: Bearer`).",
    404: "Unknown, deactivated or not yours: one identical body, so nothing can be "
         "fingerprinted.",
    408: "The body did not arrive within `AUXOT_BODY_READ_TIMEOUT_SECONDS`; the connection is "
         "closed. Retry.",
    409: "Conflict: an earlier request with this `Idempotency-Key` is still in flight (retry "
         "after `Retry-After`), or the work item's state does not allow the action.",
    411: "A chunked body the server cannot read: send Content-Length.",
    413: "The body is too large.",
    415: "Not JSON, not UTF-8, or compressed (`Content-Encoding`; `Accept-Encoding: identity`).",
    422: "The request failed validation, or an `Idempotency-Key` was reused with another "
         "body.",
    429: "Rate limited: retry after `Retry-After` seconds.",
    503: "Nothing was accepted: retry after `Retry-After` seconds.",
}


def problem_schema(status: int) -> OpenApiResponse:
    examples = [
        OpenApiExample(code, value=problem_body(code, _EXAMPLE_DETAILS.get(code, title)),
                       response_only=True, status_codes=[str(status)],
                       media_type=PROBLEM_CONTENT_TYPE)
        for code, (code_status, title) in PROBLEMS.items()
        if code_status == status and code not in OPS_PROBLEMS
    ]
    return OpenApiResponse(ProblemSerializer, description=_STATUS_TEXT.get(status, ""),
                           examples=examples)


def problems(*statuses: int) -> dict:
    """`responses` entries for these statuses, as application/problem+json."""
    return {(status, PROBLEM_CONTENT_TYPE): problem_schema(status) for status in statuses}


# --- examples ------------------------------------------------------------------------------
def _work_example(status: str) -> dict:
    done = status in ("completed", "failed")
    return {
        "work_id": EXAMPLE_WORK_ID, "intake_id": EXAMPLE_INTAKE_ID,
        "workflow": {"id": "0b9c7c55-2f0f-4d7c-a8c9-b1d46a9c0a01", "name": "Greet and wait"},
        "status": status, "created_at": "2026-11-29T06:52:34.007000Z",
        "started_at": "2026-11-29T06:52:34.041000Z",
        "finished_at": "2026-11-29T06:52:37.090000Z" if done else None,
        "output": {"greeting": "Hello, Acme Corp"} if status == "completed" else None,
        "error": {"code": "bad_expression", "message": "Bad jmespath expression",
                  "step": "Build greeting", "step_position": 1} if status == "failed" else None,
        "correlation_id": "deploy-4711",
        "current_step": None if done else {"position": 2, "name": "Wait a moment",
                                           "kind": "delay"},
        "waiting_on": None if done else {"kind": "delay", "since": "2026-11-29T06:52:34.043000Z",
                                         "until": "2026-11-29T06:52:37.043000Z",
                                         "step": "Wait a moment"},
        "diagnosis": {"completed": "Completed.",
                      "failed": "Failed at step 'Build greeting': Bad jmespath expression "
                                "(bad_expression).",
                      "running": "Waiting at step 2 'Wait a moment' (a delay) until "
                                 "2026-11-29T06:52:37.043Z; nothing to do."}[status],
        "steps": [
            {"position": 1, "name": "Build greeting", "kind": "transform",
             "status": "failed" if status == "failed" else "completed", "attempts": 1,
             "started_at": "2026-11-29T06:52:34.041000Z",
             "finished_at": "2026-11-29T06:52:34.043000Z",
             "error": None},
        ],
        "redacted_at": None,
    }


WORK_EXAMPLES = [OpenApiExample(status, value=_work_example(status), response_only=True,
                                status_codes=["200"])
                 for status in ("running", "completed", "failed")]
TRIGGER_EXAMPLES = [
    OpenApiExample("ticket", value={"ticket_id": "SUP-1042", "customer": "Acme Corp"},
                   request_only=True),
    OpenApiExample("accepted", response_only=True, status_codes=["202"], value={
        "work_id": EXAMPLE_WORK_ID, "status": "pending",
        "status_url": f"https://auxot.example.com/v1/intake/{EXAMPLE_INTAKE_ID}/work/"
                      f"{EXAMPLE_WORK_ID}",
        "created_at": "2026-11-29T06:52:34.007000Z"}),
]

# --- the decorators the views use ----------------------------------------------------------
trigger_schema = extend_schema(
    operation_id="intake_trigger",
    summary="Trigger the intake's workflow",
    description="Any JSON value is the workflow's input (UTF-8; strings may not contain "
    "`\\u0000` or unpaired surrogates, nesting up to 64 levels, no duplicate keys, no NaN). "
    "`202` means durably queued, not done: "
    "poll `status_url` (or wait for the callback). A rejected request never creates a work item. "
    "A personal key whose owner is an auditor gets `403` (auditors read: they may poll). "
    "`429` when the key's, the intake's or the organization's rate limit is used up.",
    tags=["intakes"],
    parameters=[INTAKE_ID, *TRIGGER_HEADERS, RETRY_AFTER_ERRORS, WWW_AUTHENTICATE],
    request={"application/json": OpenApiTypes.ANY},
    responses={202: OpenApiResponse(TriggerAcceptedSerializer, description="Accepted and "
                                    "stored."),
               **problems(400, 401, 403, 404, 408, 409, 411, 413, 415, 422, 429, 503)},
    examples=TRIGGER_EXAMPLES,
)

work_item_schema = extend_schema(
    operation_id="work_item_get",
    summary="Get a work item (poll, or long-poll with ?wait=)",
    description="Status, times, output or error, per-step progress, what it waits on and a "
    "one-line diagnosis. Not terminal: `Retry-After` says when to look again; or pass "
    f"`?wait=N` (N <= {settings.AUXOT_LONG_POLL_MAX_SECONDS}) to be answered as soon as it "
    "finishes.",
    tags=["work items"],
    parameters=[INTAKE_ID, WORK_ID, WAIT, STATE, RETRY_AFTER, WAIT_MAX, STATE_HEADER,
                WAIT_REFUSED,
                WWW_AUTHENTICATE],
    responses={200: OpenApiResponse(WorkItemSerializer, description="The work item."),
               **problems(400, 401, 404, 429, 503)},
    examples=WORK_EXAMPLES,
)


APPROVAL_EXAMPLES = [
    OpenApiExample("approve", value={"decision": "approve", "comment": "Refund checked."},
                   request_only=True),
    OpenApiExample("reject", value={"decision": "reject", "comment": "Over the limit."},
                   request_only=True),
]
CANCEL_EXAMPLES = [
    OpenApiExample("with a reason", value={"reason": "Sent to the wrong customer."},
                   request_only=True),
    OpenApiExample("no reason", value={}, request_only=True),
]


def work_item_action_schema(*, operation_id: str, summary: str, description: str, request,
                            statuses: tuple[int, ...] = (400, 401, 403, 404, 409, 415, 503)):
    """For POST actions on a work item (approval, cancel): `request` is the view's own
    InputSerializer, the one that validates the body; the answer is the work item."""
    return extend_schema(
        operation_id=operation_id, summary=summary, description=description,
        tags=["work items"], parameters=[INTAKE_ID, WORK_ID, WWW_AUTHENTICATE],
        # Named explicitly: the view's parser accepts any type so that a wrong one gets our 415.
        request={"application/json": request},
        responses={200: OpenApiResponse(WorkItemSerializer, description="The work item."),
                   **problems(*statuses)},
    )


REPLAY_EXAMPLES = [
    OpenApiExample("from the failed step", value={"from": "failed_step"}, request_only=True),
    OpenApiExample("with a reason", value={"from": "failed_step",
                                           "reason": "Payments API was down 10:05-11:05."},
                   request_only=True),
    OpenApiExample("start over", value={"from": "start"}, request_only=True),
    OpenApiExample("no body", value={}, request_only=True),
]


def replay_schema(*, request):
    return extend_schema(
        operation_id="work_item_replay",
        summary="Replay a failed work item",
        description="Creates a NEW work item that takes the failed one forward; the original "
        "stays `failed` (its poll lists the replay in `replayed_by`). `from: failed_step` "
        "(default) carries the steps that completed before the failure (not run again, shown "
        "as `carried`) and sends the failed step with the `Idempotency-Key` it had before; "
        "`from: start` runs every step again with the original input and new keys. The "
        "answer is a `202` like a trigger's; the new item's callback goes where the "
        "original's went, with `replay_of` in the body. 409 `not_replayable` for an item "
        "that is not failed or was canceled. Auditors' keys get 403. A replay counts against "
        "the same rate limits as a trigger.",
        tags=["work items"],
        parameters=[INTAKE_ID, WORK_ID, *[header for header in TRIGGER_HEADERS if header.name in (
            "Idempotency-Key", "Location", "Idempotent-Replayed", "RateLimit-Limit",
            "RateLimit-Remaining", "RateLimit-Reset")],
            RETRY_AFTER_ERRORS, WWW_AUTHENTICATE],
        request={"application/json": request},
        responses={202: OpenApiResponse(TriggerAcceptedSerializer, description="The replay, "
                                        "accepted and stored."),
                   **problems(400, 401, 403, 404, 408, 409, 415, 422, 429, 503)},
    )


def approval_schema(*, request):
    return work_item_action_schema(
        operation_id="work_item_approval",
        summary="Approve or reject a waiting approval step",
        description="For a work item waiting at an `approval` step. Personal keys only (a team "
        "key gets 403: an approval is a person's decision); the key's user must be an admin or "
        "member (auditors get 403). 409 when the item is not waiting for an approval (or was "
        "canceled or decided meanwhile: of two conflicting actions exactly one wins). Reject "
        "fails the item with code `rejected`. A body that does not match is 400 "
        "`invalid_request` with `errors` (one `{pointer, message}` per field); a credential "
        "in `comment` (found by its format) is 422 `validation_failed`. Approvals and "
        "cancels count with polls against the per-key and per-organization poll rate (429 "
        "`rate_limited` with `Retry-After`).",
        request=request, statuses=(400, 401, 403, 404, 408, 409, 415, 422, 429, 503))


def cancel_schema(*, request):
    return work_item_action_schema(
        operation_id="work_item_cancel",
        summary="Cancel a work item",
        description="Ends a pending or running item as `failed` with code `canceled`; a running "
        "step's result is discarded. Body optional (no body, `{}` or `{\"reason\": ...}`). "
        "409 when the item already finished, or while an approval just recorded for it is being "
        "applied (approve and cancel never both succeed). A credential in `reason` (found by "
        "its format) is 422 `validation_failed`. Cancels and approvals count with polls "
        "against the per-key and per-organization poll rate (429 `rate_limited`).",
        request=request, statuses=(400, 401, 403, 404, 408, 409, 415, 422, 429, 503))
