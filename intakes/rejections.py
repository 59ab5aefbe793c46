"""`intake.rejected` audit rows: who was turned away at the intake endpoints, and why.

Recorded: problem code, status, method, path's intake id, the key's lookup id when the
token was well-formed, the client IP. Never the body, never the token.

Volume is bounded per web process: at most AUXOT_REJECTION_AUDIT_PER_MINUTE rows a minute
overall and AUXOT_REJECTION_AUDIT_PER_SOURCE per (IP, code), an IPv6 source being its /64
(one host's share: anyone with IPv6 holds a /64 of addresses). Rejections over the budget
are counted, and the count is written as `suppressed` in the next row for that source, so a
flood of 401s costs no more than a few rows a minute. A failing audit write is logged and
dropped: it never turns the 4xx into a 500.
"""

import logging

from django.conf import settings
from django.db import DatabaseError, transaction
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.tokens import token_parse
from auxot.auditbudget import AuditBudget, budget_source
from auxot.http import client_ip
from auxot.services import audit_record

logger = logging.getLogger(__name__)

AUDITED_STATUSES = frozenset({400, 401, 403, 404, 411, 413, 415, 422, 429})
EVENT = "intake.rejected"
budget = AuditBudget(per_minute=lambda: settings.AUXOT_REJECTION_AUDIT_PER_MINUTE,
                     per_source=lambda: settings.AUXOT_REJECTION_AUDIT_PER_SOURCE)


def _lookup_id(request: Request) -> str:
    key = getattr(request, "auth", None)
    if key is not None:
        return key.lookup_id
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header.startswith("Bearer ") and len(header) <= 512:
        parsed = token_parse(header[len("Bearer "):])
        if parsed is not None:
            return parsed.lookup_id  # well-formed and checksummed: not a secret
    return ""


def intake_rejection_record(*, request: Request, response: Response, intake_id: str) -> None:
    """Write one intake.rejected row (budget permitting). Never raises."""
    data = response.data if isinstance(response.data, dict) else {}
    code = str(data.get("code", "")) or str(response.status_code)
    ip = client_ip(request)
    suppressed = budget.take((budget_source(ip), code))
    if suppressed is None:
        return
    key = getattr(request, "auth", None)
    extra = {"code": code, "status": response.status_code, "method": request.method,
             "intake_id": intake_id[:64], "key_lookup_id": _lookup_id(request)}
    if suppressed:
        extra["suppressed"] = suppressed
    try:
        with transaction.atomic():
            audit_record(event=EVENT, org=key.org if key is not None else None,
                         actor_key_lookup=extra["key_lookup_id"], ip=ip, extra=extra)
    except DatabaseError as exc:
        logger.warning("could not record an intake rejection: %s", type(exc).__name__)


class RejectionAuditMixin:
    """For intake APIViews: audit every 4xx listed in AUDITED_STATUSES."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code in AUDITED_STATUSES:
            intake_rejection_record(request=request, response=response,
                                    intake_id=str(kwargs.get("intake_id", "")))
        return response
