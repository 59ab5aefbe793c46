"""The public v1 API. Views parse, authorize, call one service, render."""

import contextlib
import uuid

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed, MethodNotAllowed
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apikeys.authentication import BearerKeyAuthentication
from auxot.credentials import api_free_text_refusal
from auxot.errors import ApplicationError, UnauthorizedError
from auxot.http import client_ip
from auxot.logs import log_context_bind
from auxot.timefmt import iso
from intakes.body import request_json
from intakes.longpoll import state_parse, wait_parse
from intakes.metrics import trigger_accepted, trigger_rejected
from intakes.openapi import (
    APPROVAL_EXAMPLES,
    CANCEL_EXAMPLES,
    TriggerHeadersSerializer,
    approval_schema,
    cancel_schema,
    trigger_schema,
    work_item_schema,
)
from intakes.pollrate import poll_rate_take
from intakes.presenters import work_item_poll_view
from intakes.rejections import RejectionAuditMixin
from intakes.services import (
    intake_access_hold,
    intake_for_key,
    intake_for_trigger,
    intake_key_load,
    intake_trigger,
    work_item_for_key,
    work_item_poll,
)
from workflows.services import work_item_cancel, work_item_decide


def _absolute(request: Request, path: str) -> str:
    base = settings.AUXOT_PUBLIC_BASE_URL
    return f"{base}{path}" if base else request.build_absolute_uri(path)


class IntakeKeyAuthentication(BearerKeyAuthentication):
    """The Bearer key and the URL's intake with the key's access to it, in one SELECT."""

    def key_loader(self, request):
        intake_id = (request.parser_context or {}).get("kwargs", {}).get("intake_id")
        return lambda lookup_id: intake_key_load(lookup_id=lookup_id, intake_id=intake_id)


class PublicApi(RejectionAuditMixin, APIView):
    """Base of the /v1/ views: a method the view does not have is 405 before any key is
    checked (the routes are public; a wrong method should not read as a key problem)."""

    authentication_classes = [IntakeKeyAuthentication]

    def initial(self, request: Request, *args, **kwargs) -> None:
        method = request.method.lower()
        if method not in self.http_method_names or not hasattr(self, method):
            raise MethodNotAllowed(request.method)
        _bind_ids(kwargs)
        super().initial(request, *args, **kwargs)
        if request.auth is not None:
            log_context_bind(key_lookup_id=request.auth.lookup_id)

    def options(self, request: Request, *args, **kwargs) -> Response:
        """The methods, nothing more: DRF's metadata answer named the view's class and
        quoted its docstring (the code's own notes) to any caller with a key."""
        return Response(status=204, headers={"Allow": ", ".join(self.allowed_methods)})


@contextlib.contextmanager
def key_refused_as_authentication():
    """A key refused after authentication (revoked, expired, ... while the request ran)
    answers as authentication refuses it: the same 401 and WWW-Authenticate."""
    try:
        yield
    except UnauthorizedError as exc:
        raise AuthenticationFailed(exc.detail) from None


def _still_allowed(key, intake):
    return lambda: intake_access_hold(key=key, intake=intake)


def _bind_ids(kwargs: dict) -> None:
    """The URL's ids into the log context, only when they are UUIDs (the path is hostile)."""
    ids = {}
    for name in ("intake_id", "work_id"):
        try:
            ids[name] = str(uuid.UUID(str(kwargs.get(name, ""))))
        except ValueError:
            continue
    log_context_bind(**ids)


class IntakeTriggerApi(PublicApi):
    """POST /v1/intake/{intake_id}: accept JSON, answer 202 with a work_id."""

    @trigger_schema
    def post(self, request: Request, intake_id: str) -> Response:
        intake = intake_for_trigger(intake_id=intake_id, key=request.auth)
        payload = request_json(request)
        headers = TriggerHeadersSerializer.from_headers(request.headers)
        with key_refused_as_authentication():
            result = intake_trigger(
                intake=intake, key=request.auth, payload=payload, ip=client_ip(request),
                correlation_id=headers.get("correlation_id", ""),
                callback_url=request.headers.get("Auxot-Callback-Url", ""),
                idempotency_key=headers.get("idempotency_key"))
        item = result.item
        log_context_bind(work_id=str(item.pk))
        trigger_accepted(replayed=result.replayed)
        status_url = _absolute(request, reverse(
            "work-item-detail", kwargs={"intake_id": intake.pk, "work_id": item.pk}))
        # A replay answers what the first request got: the item as it was accepted.
        body = {"work_id": str(item.pk), "status": "pending" if result.replayed else item.status,
                "status_url": status_url, "created_at": iso(item.created_at)}
        headers = {"Location": status_url, **(result.rate.headers() if result.rate else {})}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status=202, headers=headers)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400:
            data = response.data if isinstance(response.data, dict) else {}
            trigger_rejected(code=str(data.get("code") or f"http_{response.status_code}"))
        return response


class WorkItemDetailApi(PublicApi):
    """GET /v1/intake/{intake_id}/work/{work_id}[?wait=N]: status, progress, why it waits."""

    @work_item_schema
    def get(self, request: Request, intake_id: str, work_id: str) -> Response:
        poll_rate_take(key=request.auth)
        wait = wait_parse(request.query_params.getlist("wait"))
        state = state_parse(request.query_params.getlist("state"))
        try:
            read, refused = work_item_poll(intake_id=intake_id, work_id=work_id,
                                           key=request.auth, wait=wait, state=state)
        except UnauthorizedError as exc:  # the key was refused while the request waited
            raise AuthenticationFailed(exc.detail) from None
        view = work_item_poll_view(read.item, intake=read.intake, delivery=read.delivery,
                                   delivery_read=True, replayed_by=read.replayed_by,
                                   progress=read.progress)
        headers = {"Retry-After": str(view.retry_after)} if view.retry_after else {}
        headers["Auxot-Wait-Max"] = str(settings.AUXOT_LONG_POLL_MAX_SECONDS)
        # What `?wait=N&state=` waits to change: whatever the body shows that changes while
        # the item runs (workflows/presenters.py poll_state).
        headers["Auxot-State"] = view.state
        if refused:  # this process has as many long-polls waiting as it allows
            headers["Auxot-Wait-Refused"] = "busy"
        return Response(view.body, headers=headers)


# --- Work item actions: approve/reject an approval step, cancel -------------------------
class TextField(serializers.CharField):
    """A JSON string only: DRF's CharField would quietly turn 5 or 1.5 into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class FreeTextField(TextField):
    """Text a caller stores (a comment, a reason): kept with the work item and in the audit
    log, so a credential found in it by its format (auxot/credentials.py, as in the admin's
    free text) is refused, naming its kind, never echoing it. Every text field of a request
    body is one (tests/intakes/test_api_free_text.py)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if message := api_free_text_refusal(value, self.field_name):
            raise serializers.ValidationError(message, code=CREDENTIAL)
        return value


CREDENTIAL = "credential"


def _validated(serializer_class: type[serializers.Serializer], data, hint: str) -> dict:
    """The body through the view's InputSerializer, or 400 `invalid_request` naming each
    field that is wrong as a JSON pointer; a credential in free text is 422
    `validation_failed`, its detail naming the field and the credential's kind."""
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        errors = _pointers(serializer.errors)
        found = [str(text) for messages in serializer.errors.values() for text in messages
                 if getattr(text, "code", None) == CREDENTIAL]
        if found:
            raise ApplicationError(found[0], code="validation_failed", extra={"errors": errors})
        raise ApplicationError(hint, extra={"errors": errors})
    return serializer.validated_data


def _pointers(errors: dict) -> list[dict]:
    return [{"pointer": "" if name == "non_field_errors" else f"/{name}", "message": str(text)}
            for name, messages in errors.items() for text in messages]


class WorkItemApprovalApi(PublicApi):
    """POST /v1/intake/{intake_id}/work/{work_id}/approval: {"decision", "comment"}.

    Personal keys only (an approval is a person's decision; a team key gets 403); the
    key's user must be an admin or member of the organization (auditors get 403).
    """

    @extend_schema_serializer(component_name="Approval", examples=APPROVAL_EXAMPLES)
    class InputSerializer(serializers.Serializer):
        decision = serializers.ChoiceField(choices=["approve", "reject"])
        comment = FreeTextField(required=False, allow_blank=True, allow_null=True,
                                max_length=2000, trim_whitespace=False,
                                help_text="Kept with the decision; a credential in it is 422.")

    @approval_schema(request=InputSerializer)
    def post(self, request: Request, intake_id: str, work_id: str) -> Response:
        poll_rate_take(key=request.auth, action=True)
        intake = intake_for_key(intake_id=intake_id, key=request.auth)
        item = work_item_for_key(intake=intake, work_id=work_id)
        data = _validated(self.InputSerializer, request.data,
                          'Send {"decision": "approve" | "reject", "comment": "..."}.')
        # Only while the key may still act: its access checked first (a revocation since
        # authentication answers as it would for a later request) and again as the
        # decision's last statement (intake_access_hold).
        with key_refused_as_authentication():
            intake_access_hold(key=request.auth, intake=intake)
            work_item_decide(item=item, decision=data["decision"],
                             comment=data.get("comment") or "", user=request.auth.user,
                             key=request.auth, ip=client_ip(request),
                             still_allowed=_still_allowed(request.auth, intake))
        item.refresh_from_db()
        return Response(work_item_poll_view(item, intake=intake).body)


class WorkItemCancelApi(PublicApi):
    """POST /v1/intake/{intake_id}/work/{work_id}/cancel: end a non-terminal item.

    Team keys may cancel work on their team's intakes; a personal key's user must be an
    admin or member (auditors get 403). Body optional: {"reason": "..."}.
    """

    @extend_schema_serializer(component_name="Cancel", examples=CANCEL_EXAMPLES)
    class InputSerializer(serializers.Serializer):
        reason = FreeTextField(required=False, allow_blank=True, max_length=500,
                               trim_whitespace=False,
                               help_text="Kept in the audit log; a credential in it is 422.")

    @cancel_schema(request=InputSerializer)
    def post(self, request: Request, intake_id: str, work_id: str) -> Response:
        poll_rate_take(key=request.auth, action=True)
        intake = intake_for_key(intake_id=intake_id, key=request.auth)
        item = work_item_for_key(intake=intake, work_id=work_id)
        data = _validated(self.InputSerializer, request.data,
                          'Send no body, or {"reason": "..."} with at most 500 characters.')
        with key_refused_as_authentication():  # as the approval's
            intake_access_hold(key=request.auth, intake=intake)
            item = work_item_cancel(item=item, user=request.auth.user, key=request.auth,
                                    reason=data.get("reason", ""), ip=client_ip(request),
                                    still_allowed=_still_allowed(request.auth, intake))
        return Response(work_item_poll_view(item, intake=intake).body)
