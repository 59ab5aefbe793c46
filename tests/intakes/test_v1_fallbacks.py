"""Nothing under /v1/ answers HTML: unknown paths are 404 and wrong methods 405, as
problem+json, with DEBUG on (`make run`) and off."""

import json
import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from auxot.errors import NOT_FOUND_DETAIL, PROBLEM_CONTENT_TYPE
from tests.conftest import bearer, trigger

pytestmark = pytest.mark.django_db
WORK = "/v1/intake/3f1c2a9e-0000-4000-8000-000000000001/work/3f1c2a9e-0000-4000-8000-000000000002"


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, f"/v1/problems/{code}")
    return body


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/nope", "/v1/intake", "/v1/intake/x/",
                                  f"{WORK}/approve", "/v1/schema/", "/v1/problems/a/b"])
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_unknown_v1_path_is_problem_404(debug, path, method):
    client = Client(enforce_csrf_checks=True)  # a POST must not meet the HTML CSRF page
    body = _problem(getattr(client, method)(path), 404, "not_found")
    assert body["detail"] == NOT_FOUND_DETAIL
    # One text for every cause, and it says what to check (a newcomer's empty $WORK_ID or
    # deactivated intake met a bare "No such intake").
    assert "check the intake id" in body["detail"] and "active" in body["detail"]


def test_unknown_path_404_matches_unknown_intake_404(debug, client, member_token):
    unknown_path = client.get("/v1/nope", **bearer(member_token))
    unknown_intake = client.post("/v1/intake/3f1c2a9e-0000-4000-8000-000000000009", {},
                                 content_type="application/json", **bearer(member_token))
    assert unknown_path.json() == unknown_intake.json()


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("get", "/v1/intake/x", "POST, OPTIONS"),
    ("delete", "/v1/intake/x", "POST, OPTIONS"),
    ("head", "/v1/intake/x", "POST, OPTIONS"),
    ("post", WORK, "GET, HEAD, OPTIONS"),
    ("put", WORK, "GET, HEAD, OPTIONS"),
    ("get", f"{WORK}/approval", "POST, OPTIONS"),
    ("patch", f"{WORK}/cancel", "POST, OPTIONS"),
    ("post", "/v1/schema", "GET, HEAD, OPTIONS"),
    ("post", "/v1/docs", "GET, HEAD"),
    ("options", "/v1/docs", "GET, HEAD"),
    ("delete", "/v1/problems/not_found", "GET, HEAD"),
])
def test_wrong_method_on_a_known_path_is_problem_405_with_allow(debug, method, path, allow):
    response = getattr(Client(enforce_csrf_checks=True), method)(path)
    assert response["Allow"] == allow
    if method == "head":
        assert (response.status_code, response["Content-Type"]) == (405, PROBLEM_CONTENT_TYPE)
        return
    assert method.upper() in _problem(response, 405, "method_not_allowed")["detail"]


def test_wrong_method_is_405_with_a_valid_key_too(client, member_token, intake_a):
    response = client.get(f"/v1/intake/{intake_a.pk}", **bearer(member_token))
    _problem(response, 405, "method_not_allowed")


def test_problem_pages_still_answer_get(client):
    from auxot.errors import PROBLEM_HELP

    assert client.get("/v1/problems/not_found").json() == {
        "type": "/v1/problems/not_found", "code": "not_found", "status": 404,
        "title": "Not found", "description": PROBLEM_HELP["not_found"]}


ACCEPTS = ["application/xml", "text/html", "application/problem+json", "text/plain;q=1, */*;q=0",
           "image/png", "application/json;q=0"]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_an_accept_the_api_cannot_meet_gets_json_not_a_500(debug, client, member_token,
                                                           intake_a, accept):
    """The API speaks JSON: any Accept gets its JSON answer (RFC 9110 lets a server ignore
    Accept), before and after authentication, success or problem."""
    headers = {"HTTP_ACCEPT": accept}
    accepted = client.post(f"/v1/intake/{intake_a.pk}", {"n": 1}, content_type="application/json",
                           **bearer(member_token), **headers)
    assert accepted.status_code == 202, accepted.content
    assert accepted["Content-Type"] == "application/json"
    poll = client.get(accepted.json()["status_url"], **bearer(member_token), **headers)
    assert poll.status_code == 200 and poll.json()["work_id"] == accepted.json()["work_id"]
    _problem(client.post(f"/v1/intake/{intake_a.pk}", {}, content_type="application/json",
                         **headers), 401, "unauthorized")
    _problem(client.get(f"{WORK}", **bearer(member_token), **headers), 404, "not_found")


def test_the_schema_still_chooses_its_format_by_accept(client):
    assert client.get("/v1/schema", HTTP_ACCEPT="application/json")["Content-Type"].startswith(
        "application/json")
    assert "yaml" in client.get("/v1/schema", HTTP_ACCEPT="application/yaml")["Content-Type"]


def test_an_api_exception_without_a_code_of_its_own_is_a_problem(rf):
    from rest_framework import exceptions

    from auxot.errors import exception_handler

    class Teapot(exceptions.APIException):
        status_code = 418
        default_detail = "short and stout"

    class Unavailable(exceptions.APIException):
        status_code = 503

    for exc, status, code in ((Teapot(), 400, "invalid_request"),
                              (exceptions.NotAcceptable(), 400, "invalid_request"),
                              (exceptions.APIException("x"), 500, "internal_error"),
                              (Unavailable("busy"), 500, "internal_error"),
                              (exceptions.APIException({"a": ["b"]}), 500, "internal_error")):
        response = exception_handler(exc, {})
        assert (response.status_code, response.data["code"]) == (status, code)
    plain = exception_handler(Teapot({"field": ["too short"]}), {})
    assert plain.data["detail"] == "The request was refused."
    assert plain.data["errors"] == {"field": ["too short"]}
    assert "ErrorDetail" not in json.dumps(plain.data, default=str)


@pytest.mark.parametrize("fmt", ["xml", "html", "api", "json"])
def test_a_format_the_api_does_not_have_gets_json_not_a_404(client, member_token, intake_a,
                                                             fmt):
    accepted = client.post(f"/v1/intake/{intake_a.pk}?format={fmt}", {"n": 1},
                           content_type="application/json", **bearer(member_token))
    assert accepted.status_code == 202, accepted.content
    assert accepted["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", ["/v1/intake/x", WORK, "/v1/nope"])
def test_a_host_django_refuses_is_problem_400_not_html(client, settings, path):
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["auxot.example.com"]
    body = _problem(client.post(path, {}, content_type="application/json",
                                HTTP_HOST="evil.example"), 400, "invalid_request")
    assert "Host" in body["detail"]
    page = client.get("/admin/", HTTP_HOST="evil.example")  # the admin keeps Django's page
    assert page.status_code == 400 and "text/html" in page["Content-Type"]


FILL = {"code": "not_found", "intake_id": WORK.split("/")[3], "work_id": WORK.split("/")[5]}


def _v1_paths(patterns=None, prefix: str = "") -> list[str]:
    """Every routed /v1/ path, its parameters filled with values that parse."""
    paths = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            paths += _v1_paths(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith("v1/"):
            filled = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: FILL[m[1]], route)
            paths.append("/" + filled)
    return paths


def test_the_walk_finds_every_kind_of_v1_route():
    assert {"/v1/docs", "/v1/schema", "/v1/problems", "/v1/problems/not_found",
            f"{WORK}/cancel"} <= set(_v1_paths())


@pytest.mark.parametrize("path", _v1_paths())
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                    "TRACE"])
def test_no_method_on_a_v1_route_is_a_500(path, method, settings):
    """Anyone, without a key, may send any method to any public route: never a 500 (OPTIONS
    /v1/docs was one: the Swagger view rendered its metadata through a template it lacks)."""
    settings.DEBUG = False
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    response = client.generic(method, path)
    assert response.status_code < 500, (method, path, response.status_code)


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/intake/{intake}", "POST, OPTIONS"),
    ("/v1/intake/{intake}/work/{work}", "GET, HEAD, OPTIONS"),
    ("/v1/intake/{intake}/work/{work}/approval", "POST, OPTIONS"),
    ("/v1/intake/{intake}/work/{work}/cancel", "POST, OPTIONS"),
])
def test_options_with_a_key_says_the_methods_and_nothing_of_the_code(
        client, intake_a, member_token, path, allow):
    """DRF's metadata answer named the view class and quoted its docstring."""
    work = trigger(APIClient(), intake_a.pk, member_token).json()["work_id"]
    response = client.options(path.format(intake=intake_a.pk, work=work),
                              **bearer(member_token))
    assert response.status_code == 204
    assert response["Allow"] == allow
    assert response.content == b""
