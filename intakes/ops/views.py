"""/healthz, /readyz and /metrics: plain Django views (no DRF: no key, no session)."""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from auxot.errors import django_problem
from auxot.http import came_through_proxy, peer_ip
from auxot.metrics import metrics_render
from intakes.ops.checks import CHECKS, readiness
from intakes.ops.collector import StateCollector


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up. Touches nothing else, so it is always fast."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """200 when every check passes, else 503 naming the failing ones. ?checks=a,b: a subset
    (a load balancer in front of web hosts may leave out `worker` and `backlog`)."""
    names = [n.strip() for n in request.GET.get("checks", "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        return django_problem("invalid_request",
                              f"Unknown check(s); the checks are {', '.join(CHECKS)}.")
    ready, body = readiness(names or None)
    return JsonResponse(body, status=200 if ready else 503)


def _in_networks(ip: str | None) -> bool:
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False)
               for net in settings.AUXOT_METRICS_ALLOWED_NETWORKS)


def metrics_refusal_for(*, ip: str | None, authorization: str,
                        forwarded: bool = False) -> tuple[str, str] | None:
    """None when this caller may read the metrics; else (problem code, detail). Off (404)
    unless a token or networks are configured; with both, both must match. A request that
    came through a proxy (`forwarded`: it carries X-Forwarded-For or Forwarded) has the
    proxy's address, not the caller's: networks alone never let it in."""
    token, networks = settings.AUXOT_METRICS_TOKEN, settings.AUXOT_METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        return "not_found", "Metrics are not enabled on this server."
    if networks and not _in_networks(ip):
        return "forbidden", "This address may not read the metrics."
    if networks and not token and forwarded:
        return "forbidden", ("Through a proxy the address is the proxy's: set "
                             "AUXOT_METRICS_TOKEN to read the metrics this way.")
    if token:
        if not authorization.startswith("Bearer "):
            return "metrics_unauthorized", "Send Authorization: Bearer <the metrics token>."
        if not hmac.compare_digest(authorization[len("Bearer "):].encode(), token.encode()):
            return "forbidden", "Wrong metrics token."
    return None


def metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    refused = metrics_refusal_for(
        ip=peer_ip(request), authorization=request.META.get("HTTP_AUTHORIZATION", ""),
        forwarded=came_through_proxy(request.META))
    if refused is None:
        return None
    response = django_problem(*refused)
    if refused[0] == "metrics_unauthorized":
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = metrics_refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(metrics_render(StateCollector()), content_type=CONTENT_TYPE_LATEST)
