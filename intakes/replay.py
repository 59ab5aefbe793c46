"""POST /v1/intake/{intake_id}/work/{work_id}/replay: take a failed item forward.

The same rules as a trigger for the answer (202, `status_url`, `Location`) and for
`Idempotency-Key` (scoped to the key's owner and the intake; the same key with the same
request answers the first replay again, with another request 422). Who may: the intake's
callers that may act (admins and members through personal keys, team keys of the intake's
team); auditors' keys get 403, everyone else the one 404.
"""

from django.db import IntegrityError, OperationalError
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import ApiKey
from auxot.http import client_ip
from auxot.timefmt import iso
from intakes import idempotency, ratelimit
from intakes.api import (
    FreeTextField,
    PublicApi,
    _absolute,
    _validated,
    key_refused_as_authentication,
)
from intakes.body import StrictJSONParser
from intakes.models import Intake
from intakes.openapi import REPLAY_EXAMPLES, TriggerHeadersSerializer, replay_schema
from intakes.services import (
    TriggerResult,
    intake_access_held,
    intake_for_key,
    work_item_for_key,
)
from workflows.models import WorkItem
from workflows.replay import (
    FROM_FAILED_STEP,
    FROM_START,
    REASON_MAX_CHARS,
    NotReplayable,
    work_item_replay,
)


def intake_work_replay(*, intake: Intake, key: ApiKey, item: WorkItem, start_over: bool,
                       ip: str | None, idempotency_key: str | None = None,
                       reason: str = "") -> TriggerResult:
    """Replay `item` for a caller; with an Idempotency-Key the replay and its record commit
    together, and a repeat of the same request answers the first replay. A replay is new
    work: it counts against the same rate limits as a trigger (429 creates nothing)."""
    request = {"replay_of": str(item.pk), "from": FROM_START if start_over else FROM_FAILED_STEP}
    if reason:  # without one, the request (and a stored key's hash) is what it always was
        request["reason"] = reason
    claim = idempotency.idempotency_claim(key=key, header=idempotency_key, payload=request,
                                          kind="replay")
    if claim is not None:  # a repeat answers the first replay, whatever happened since
        winner = idempotency.idempotency_winner(claim=claim, intake=intake, now=timezone.now())
        if winner is not None:
            return TriggerResult(item=winner, replayed=True)
    # Counted before the replay's transaction (never held across it), given back unless
    # the replay commits.
    ticket = ratelimit.ratelimit_consume(intake=intake, key=key, now=timezone.now())
    try:
        # Only while the key may still act: a revocation since authentication refuses it.
        with intake_access_held(key=key, intake=intake):
            new = work_item_replay(item=item, start_over=start_over, user=key.user, key=key,
                                   ip=ip, reason=reason)
            if claim is not None:
                idempotency.idempotency_bound_wait()
                idempotency.idempotency_store(claim=claim, intake=intake, work_item_id=new.pk,
                                              now=new.created_at)
    except IntegrityError:
        ratelimit.ratelimit_refund(ticket)
        if claim is None:
            raise
    except NotReplayable:
        # The same request sent twice at once: the first replay committed (with its
        # idempotency record) while this one waited on the original's row; answer it.
        ratelimit.ratelimit_refund(ticket)
        winner = claim and idempotency.idempotency_winner(claim=claim, intake=intake,
                                                          now=timezone.now())
        if not winner:
            raise
        return TriggerResult(item=winner, replayed=True)
    except OperationalError as exc:
        ratelimit.ratelimit_refund(ticket)
        if claim is None or not idempotency.is_lock_timeout(exc):
            raise
        raise idempotency.idempotency_in_flight_error() from None
    except BaseException:
        ratelimit.ratelimit_refund(ticket)
        raise
    else:
        return TriggerResult(item=new, rate=ticket.state if ticket else None)
    winner = idempotency.idempotency_winner(claim=claim, intake=intake, now=timezone.now())
    if winner is None:
        raise idempotency.idempotency_in_flight_error()
    return TriggerResult(item=winner, replayed=True)


class WorkItemReplayApi(PublicApi):
    """POST /v1/intake/{intake_id}/work/{work_id}/replay: {"from": "failed_step" | "start"}."""

    parser_classes = [StrictJSONParser]

    # `from` is a Python keyword, so the serializer is built with type().
    InputSerializer = extend_schema_serializer(component_name="Replay",
                                               examples=REPLAY_EXAMPLES)(
        type("ReplayInputSerializer", (serializers.Serializer,), {
            "from": serializers.ChoiceField(
                choices=[FROM_FAILED_STEP, FROM_START], required=False,
                default=FROM_FAILED_STEP,
                help_text="`failed_step` (default): carry the completed steps and run from the "
                          "failed one. `start`: run every step again, with new idempotency "
                          "keys."),
            "reason": FreeTextField(required=False, allow_blank=True, max_length=REASON_MAX_CHARS,
                                trim_whitespace=False,
                                help_text="Why you replay it: kept in the audit log."),
        }))

    @replay_schema(request=InputSerializer)
    def post(self, request: Request, intake_id: str, work_id: str) -> Response:
        intake = intake_for_key(intake_id=intake_id, key=request.auth)
        item = work_item_for_key(intake=intake, work_id=work_id)
        data = _validated(self.InputSerializer, request.data,
                          'Send no body, or {"from": "failed_step" | "start", "reason": "..."} '
                          f"(a reason of at most {REASON_MAX_CHARS} characters).")
        header = TriggerHeadersSerializer.from_headers(request.headers).get("idempotency_key")
        with key_refused_as_authentication():
            result = intake_work_replay(intake=intake, key=request.auth, item=item,
                                        start_over=data["from"] == FROM_START,
                                        ip=client_ip(request), idempotency_key=header,
                                        reason=data.get("reason", ""))
        new = result.item
        status_url = _absolute(request, reverse(
            "work-item-detail", kwargs={"intake_id": intake.pk, "work_id": new.pk}))
        body = {"work_id": str(new.pk), "status": "pending", "status_url": status_url,
                "created_at": iso(new.created_at)}
        headers = {"Location": status_url, **(result.rate.headers() if result.rate else {})}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status=202, headers=headers)
