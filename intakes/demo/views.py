"""The demo's own receiver, so `make run` works on a machine with no network."""

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

# Headers a receiver would never echo back to a log or a work item's output.
_NOT_ECHOED = frozenset({"authorization", "cookie", "proxy-authorization"})


@csrf_exempt
def demo_echo(request: HttpRequest) -> JsonResponse:
    """The demo's http example's receiver (mounted under DEBUG only): answers what it got,
    so `make run` shows the http step working on a machine with no network."""
    try:
        payload = json.loads(request.body) if request.body else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    headers = {name: value for name, value in request.headers.items()
               if name.lower() not in _NOT_ECHOED}
    return JsonResponse({"method": request.method, "path": request.path,
                         "args": request.GET.dict(), "headers": headers, "json": payload,
                         "data": request.body.decode("utf-8", "replace")})
