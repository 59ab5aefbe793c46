from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from auxot.errors import NOT_FOUND_DETAIL, PROBLEMS, django_problem

API_PREFIX = "/v1"


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(f"{API_PREFIX}/")


@csrf_exempt  # a problem, not Django's HTML CSRF page, for a POST to a page that never reads it
def problem_detail(request: HttpRequest, code: str) -> JsonResponse:
    """Dereferenceable `type` of every problem+json answer: /v1/problems/<code>."""
    if request.method not in ("GET", "HEAD"):
        response = django_problem("method_not_allowed",
                                  f'Method "{request.method}" not allowed; use GET.')
        response["Allow"] = "GET, HEAD"
        return response
    if code not in PROBLEMS:
        return django_problem("not_found", "Unknown problem type.")
    status, title = PROBLEMS[code]
    return JsonResponse({"code": code, "status": status, "title": title})


@csrf_exempt
def api_not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Every unrouted /v1/ path, any method. Routed here rather than left to handler404 so
    DEBUG (which replaces handler404 with Django's HTML page) answers the same."""
    return django_problem("not_found", NOT_FOUND_DETAIL)


def handler404(request: HttpRequest, exception=None):
    if is_api_path(request.path):
        return django_problem("not_found", NOT_FOUND_DETAIL)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler400(request: HttpRequest, exception=None):
    """Django's own 400s (a Host not in ALLOWED_HOSTS, a malformed request it refuses before
    any view): problem+json under /v1/ too."""
    if is_api_path(request.path):
        return django_problem("invalid_request", "The request was refused as malformed (its "
                                                 "Host header, or its form).")
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request: HttpRequest, exception=None):
    if is_api_path(request.path):
        return django_problem("forbidden", "Not allowed.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def handler500(request: HttpRequest):
    if is_api_path(request.path):
        return django_problem("internal_error", "Something went wrong on our side.")
    from django.views.defaults import server_error

    return server_error(request)

