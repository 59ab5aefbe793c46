from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import patch_vary_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.csrf import csrf_exempt

from auxot.errors import NOT_FOUND_DETAIL, PROBLEM_HELP, PROBLEMS, django_problem

API_PREFIX = "/v1"


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(f"{API_PREFIX}/")


def _problem_entry(code: str) -> dict:
    status, title = PROBLEMS[code]
    return {"type": f"{API_PREFIX}/problems/{code}", "code": code, "status": status,
            "title": title, "description": PROBLEM_HELP[code]}


def _wants_html(request: HttpRequest) -> bool:
    """A browser following a problem's `type` prefers text/html; a program (no Accept, */*,
    JSON or problem+json) gets JSON."""
    return request.get_preferred_type(["application/json", "text/html"]) == "text/html"


def _inline_code(text: str) -> SafeString:
    """The help texts mark headers and values with backticks: <code> on the page."""
    parts = text.split("`")  # the odd ones were between backticks
    return format_html_join("", "{}", ((format_html("<code>{}</code>", part) if index % 2
                                        else part,) for index, part in enumerate(parts)))


PAGE = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>"
        "<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46em;margin:2em auto;"
        "padding:0 1em}}code{{background:#f3f3f3;padding:0 .2em}}td,th{{text-align:left;"
        "vertical-align:top;padding:.3em .8em .3em 0}}</style></head><body>{}</body></html>")


def _page(title: str, body: SafeString) -> HttpResponse:
    return HttpResponse(format_html(PAGE, title, body), content_type="text/html; charset=utf-8")


def _by_accept(response: HttpResponse) -> HttpResponse:
    """The same URL answers JSON or a page: caches must keep them apart."""
    patch_vary_headers(response, ["Accept"])
    return response


def _refuse_method(request: HttpRequest) -> JsonResponse | None:
    if request.method in ("GET", "HEAD"):
        return None
    response = django_problem("method_not_allowed",
                              f'Method "{request.method}" not allowed; use GET.')
    response["Allow"] = "GET, HEAD"
    return response


@csrf_exempt  # a problem, not Django's HTML CSRF page, for a POST to a page that never reads it
def problem_detail(request: HttpRequest, code: str) -> HttpResponse:
    """Dereferenceable `type` of every problem+json answer: /v1/problems/<code>, what it
    means and what to do; JSON for programs, a page for a browser."""
    if refused := _refuse_method(request):
        return refused
    if code not in PROBLEMS:
        return django_problem("not_found", "Unknown problem type: /v1/problems lists them all.")
    entry = _problem_entry(code)
    if not _wants_html(request):
        return _by_accept(JsonResponse(entry, json_dumps_params={"ensure_ascii": False}))
    return _by_accept(_page(f"{entry['status']} {entry['title']}", format_html(
        "<h1>{} {}</h1><p><code>{}</code></p><p>{}</p>"
        "<p>Every problem Auxot answers: <a href=\"{}/problems\">the list</a>.</p>",
        entry["status"], entry["title"], code, _inline_code(entry["description"]),
        API_PREFIX)))


@csrf_exempt
def problem_index(request: HttpRequest) -> HttpResponse:
    """/v1/problems: every problem type, in status order."""
    if refused := _refuse_method(request):
        return refused
    entries = sorted((_problem_entry(code) for code in PROBLEMS),
                     key=lambda entry: (entry["status"], entry["code"]))
    if not _wants_html(request):
        return _by_accept(JsonResponse({"problems": entries},
                                       json_dumps_params={"ensure_ascii": False}))
    rows = format_html_join("", "<tr><td>{}</td><td><a href=\"{}\"><code>{}</code></a></td>"
                                "<td>{}</td></tr>",
                            ((e["status"], e["type"], e["code"], e["title"]) for e in entries))
    return _by_accept(_page("Auxot API problems", format_html(
        "<h1>Problems the Auxot API answers</h1><p>Every error is "
        "<code>application/problem+json</code>; its <code>type</code> links here.</p>"
        "<table><tr><th>status</th><th>code</th><th>title</th></tr>{}</table>", rows)))


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

