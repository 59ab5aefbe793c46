"""The public v1 API. Views parse, authorize, call one service, render."""

from django.conf import settings
from django.urls import reverse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from auxot.errors import ApplicationError
from auxot.timefmt import iso
from intakes.body import json_body
from intakes.idempotency import HEADER as IDEMPOTENCY_HEADER
from intakes.idempotency import idempotency_header_parse
from intakes.longpoll import wait_parse, work_item_wait
from intakes.openapi import approval_schema, cancel_schema, trigger_schema, work_item_schema
from intakes.presenters import work_item_poll_view
from intakes.rejections import RejectionAuditMixin
from intakes.services import intake_for_key, intake_for_trigger, intake_trigger, work_item_for_key
from workflows.services import work_item_cancel, work_item_decide

MAX_CORRELATION_ID = 200


def _absolute(request: Request, path: str) -> str:
    base = settings.AUXOT_PUBLIC_BASE_URL
    return f"{base}{path}" if base else request.build_absolute_uri(path)


def _client_ip(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _correlation_id(request: Request) -> str:
    value = request.headers.get("Auxot-Correlation-Id", "")
    if len(value) > MAX_CORRELATION_ID or not all(" " <= c <= "~" for c in value):
        raise ApplicationError(f"Auxot-Correlation-Id must be printable ASCII and at most "
                               f"{MAX_CORRELATION_ID} characters.")
    return value


class IntakeTriggerApi(RejectionAuditMixin, APIView):
    """POST /v1/intake/{intake_id}: accept JSON, answer 202 with a work_id."""

    @trigger_schema
    def post(self, request: Request, intake_id: str) -> Response:
        intake = intake_for_trigger(intake_id=intake_id, key=request.auth)
        payload = json_body(request._request)
        idempotency_key = idempotency_header_parse(request.headers.get(IDEMPOTENCY_HEADER))
        result = intake_trigger(intake=intake, key=request.auth, payload=payload,
                                ip=_client_ip(request), correlation_id=_correlation_id(request),
                                callback_url=request.headers.get("Auxot-Callback-Url", ""),
                                idempotency_key=idempotency_key)
        item = result.item
        status_url = _absolute(request, reverse(
            "work-item-detail", kwargs={"intake_id": intake.pk, "work_id": item.pk}))
        # A replay answers what the first request got: the item as it was accepted.
        body = {"work_id": str(item.pk), "status": "pending" if result.replayed else item.status,
                "status_url": status_url, "created_at": iso(item.created_at)}
        headers = {"Location": status_url, **(result.rate.headers() if result.rate else {})}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status=202, headers=headers)


class WorkItemDetailApi(RejectionAuditMixin, APIView):
    """GET /v1/intake/{intake_id}/work/{work_id}[?wait=N]: status, progress, why it waits."""

    @work_item_schema
    def get(self, request: Request, intake_id: str, work_id: str) -> Response:
        wait = wait_parse(request.query_params.get("wait"))
        intake = intake_for_key(intake_id=intake_id, key=request.auth)
        item = work_item_for_key(intake=intake, work_id=work_id)
        if wait:
            item = work_item_wait(item=item, seconds=wait)
        view = work_item_poll_view(item, intake=intake)
        headers = {"Retry-After": str(view.retry_after)} if view.retry_after else {}
        headers["Auxot-Wait-Max"] = str(settings.AUXOT_LONG_POLL_MAX_SECONDS)
        return Response(view.body, headers=headers)


# --- Work item actions (issue 3): approve/reject an approval step, cancel ----------------
class WorkItemApprovalApi(RejectionAuditMixin, APIView):
    """POST /v1/intake/{intake_id}/work/{work_id}/approval: {"decision", "comment"}.

    Personal keys only (an approval is a person's decision; a team key gets 403); the
    key's user must be an admin or member of the organization (auditors get 403).
    """

    @approval_schema
    def post(self, request: Request, intake_id: str, work_id: str) -> Response:
        intake = intake_for_key(intake_id=intake_id, key=request.auth)
        item = work_item_for_key(intake=intake, work_id=work_id)
        payload = json_body(request._request)
        decision, comment = _decision(payload)
        work_item_decide(item=item, decision=decision, comment=comment,
                         user=request.auth.user, key=request.auth, ip=_client_ip(request))
        item.refresh_from_db()
        return Response(work_item_poll_view(item, intake=intake).body)


def _decision(payload) -> tuple[str, str]:
    if not isinstance(payload, dict) or payload.get("decision") not in ("approve", "reject"):
        raise ApplicationError('Send {"decision": "approve" | "reject", "comment": "..."}.')
    comment = payload.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > 2000:
        raise ApplicationError("comment must be a string of at most 2000 characters.")
    return payload["decision"], comment


class WorkItemCancelApi(RejectionAuditMixin, APIView):
    """POST /v1/intake/{intake_id}/work/{work_id}/cancel: end a non-terminal item.

    Team keys may cancel work on their team's intakes; a personal key's user must be an
    admin or member (auditors get 403). Body optional: {"reason": "..."}.
    """

    @cancel_schema
    def post(self, request: Request, intake_id: str, work_id: str) -> Response:
        intake = intake_for_key(intake_id=intake_id, key=request.auth)
        item = work_item_for_key(intake=intake, work_id=work_id)
        reason = ""
        if request._request.body:
            payload = json_body(request._request)
            reason = payload.get("reason", "") if isinstance(payload, dict) else ""
            if not isinstance(reason, str) or len(reason) > 500:
                raise ApplicationError("reason must be a string of at most 500 characters.")
        item = work_item_cancel(item=item, user=request.auth.user, key=request.auth,
                                reason=reason, ip=_client_ip(request))
        return Response(work_item_poll_view(item, intake=intake).body)
