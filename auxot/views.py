from django.http import HttpRequest, JsonResponse

from auxot.errors import NOT_FOUND_DETAIL, PROBLEMS, django_problem


def problem_detail(request: HttpRequest, code: str) -> JsonResponse:
    """Dereferenceable `type` of every problem+json answer: /v1/problems/<code>."""
    if code not in PROBLEMS:
        return django_problem("not_found", "Unknown problem type.")
    status, title = PROBLEMS[code]
    return JsonResponse({"code": code, "status": status, "title": title})


def handler404(request: HttpRequest, exception=None):
    if request.path.startswith("/v1/"):
        return django_problem("not_found", NOT_FOUND_DETAIL)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest):
    if request.path.startswith("/v1/"):
        return django_problem("internal_error", "Something went wrong on our side.")
    from django.views.defaults import server_error

    return server_error(request)
