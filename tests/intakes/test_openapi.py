"""/v1/schema describes every /v1/ route and validates; /v1/docs works without a CDN."""

import os
import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_spec_validator import validate

# Deliberately undocumented: the problem-type pages and the schema and docs themselves.
NOT_API = {"/v1/problems", "/v1/problems/{code}", "/v1/schema", "/v1/docs"}


def _routes(patterns, prefix: str = "") -> list[tuple[str, object]]:
    routes = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes += _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            routes.append((route, pattern.callback))
    return routes


def _v1_routes() -> dict[str, set[str]]:
    """'/v1/intake/{intake_id}' -> the HTTP methods its view implements."""
    found = {}
    for route, callback in _routes(get_resolver().url_patterns):
        path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        if not path.startswith("/v1/") or path in NOT_API:
            continue
        view = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
        methods = {m for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)}
        found[path] = methods or {"get"}
    return found


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_schema_generates_without_warnings_and_validates():
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", os.devnull)


def test_schema_is_valid_openapi(schema):
    validate(schema)
    assert schema["openapi"].startswith("3.")


def _undocumented(schema: dict) -> list[str]:
    """Routed /v1/ operations that the schema lacks or documents without their problems."""
    missing = []
    for path, methods in _v1_routes().items():
        for method in sorted(methods):
            operation = schema["paths"].get(path, {}).get(method)
            if operation is None or not {"401", "404"} <= set(operation["responses"]):
                missing.append(f"{method.upper()} {path}")
    return missing


def test_every_v1_route_and_method_is_documented(schema):
    assert "/v1/intake/{intake_id}" in _v1_routes()  # the resolver walk finds the real routes
    assert _undocumented(schema) == []


def test_an_endpoint_without_docs_is_caught(client, settings):
    settings.ROOT_URLCONF = "tests.urls_undocumented"
    schema = client.get("/v1/schema?format=json").json()
    assert _undocumented(schema) == [
        "POST /v1/intake/{intake_id}/work/{work_id}/frobnicate"]


def test_every_error_response_is_problem_json_with_examples(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code >= "400"}
            assert {"401", "404"} <= set(errors), f"{method} {path}"
            for code, response in errors.items():
                media = response["content"]["application/problem+json"]
                assert media["schema"]["$ref"].endswith("/Problem")
                assert media["examples"], f"{method} {path} {code} has no example"
            assert operation["security"] == [{"apiKey": []}]


def test_bearer_scheme_documents_key_formats(schema):
    scheme = schema["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "user." in scheme["description"] and "team." in scheme["description"]


def test_headers_are_documented(schema):
    trigger = schema["paths"]["/v1/intake/{intake_id}"]["post"]
    request_headers = {p["name"] for p in trigger["parameters"] if p["in"] == "header"}
    assert {"Idempotency-Key", "Auxot-Correlation-Id", "Auxot-Callback-Url"} <= request_headers
    assert "Location" in trigger["responses"]["202"]["headers"]
    assert "Retry-After" in trigger["responses"]["503"]["headers"]
    rate_headers = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    assert rate_headers | {"Idempotent-Replayed"} <= set(trigger["responses"]["202"]["headers"])
    assert rate_headers | {"Retry-After"} <= set(trigger["responses"]["429"]["headers"])
    assert "Retry-After" in trigger["responses"]["409"]["headers"]
    codes = {e["value"]["code"] for e in
             trigger["responses"]["422"]["content"]["application/problem+json"]["examples"].values()}
    assert "idempotency_key_reused" in codes
    poll = schema["paths"]["/v1/intake/{intake_id}/work/{work_id}"]["get"]
    assert {"Retry-After", "Auxot-Wait-Max"} <= set(poll["responses"]["200"]["headers"])
    assert any(p["name"] == "wait" and p["in"] == "query" for p in poll["parameters"])


def test_schema_and_docs_need_no_key(client):
    assert client.get("/v1/schema").status_code == 200
    page = client.get("/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "https://" not in html


def test_docs_assets_are_served_locally(client):
    html = client.get("/v1/docs").content.decode()
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset


def _bodies_missing(schema: dict) -> list[str]:
    """Operations that take a body (POST, PUT, PATCH) but document none."""
    return [f"{method.upper()} {path}" for path, operations in schema["paths"].items()
            for method, operation in operations.items()
            if method in ("post", "put", "patch") and "requestBody" not in operation]


def test_every_operation_that_takes_a_body_documents_it(schema):
    assert _bodies_missing(schema) == []
    assert {"/v1/intake/{intake_id}/work/{work_id}/approval",
            "/v1/intake/{intake_id}/work/{work_id}/cancel"} <= set(schema["paths"])


def test_a_post_without_a_documented_body_is_caught(client, settings):
    settings.ROOT_URLCONF = "tests.urls_undocumented"
    schema = client.get("/v1/schema?format=json").json()
    assert _bodies_missing(schema) == ["POST /v1/intake/{intake_id}/work/{work_id}/frobnicate"]


def _body_schema(schema: dict, path: str) -> tuple[dict, dict]:
    body = schema["paths"][path]["post"]["requestBody"]
    media = body["content"]["application/json"]
    ref = media["schema"]["$ref"].rsplit("/", 1)[-1]
    return body, {"schema": schema["components"]["schemas"][ref],
                  "examples": [e["value"] for e in media["examples"].values()]}


def test_approval_body_is_the_views_serializer_with_examples(schema):
    from intakes.api import WorkItemApprovalApi

    body, media = _body_schema(schema, "/v1/intake/{intake_id}/work/{work_id}/approval")
    assert body["required"] is True
    assert media["schema"]["required"] == ["decision"]
    assert set(media["schema"]["properties"]) == set(WorkItemApprovalApi.InputSerializer().fields)
    assert media["schema"]["properties"]["comment"]["maxLength"] == 2000
    assert {"decision": "reject", "comment": "Over the limit."} in media["examples"]
    for example in media["examples"]:  # the examples pass the very serializer that validates
        assert WorkItemApprovalApi.InputSerializer(data=example).is_valid()


def test_cancel_body_is_optional_and_the_views_serializer(schema):
    from intakes.api import WorkItemCancelApi

    body, media = _body_schema(schema, "/v1/intake/{intake_id}/work/{work_id}/cancel")
    assert not body.get("required")
    assert set(media["schema"]["properties"]) == {"reason"}
    assert media["schema"]["properties"]["reason"]["maxLength"] == 500
    for example in media["examples"]:
        assert WorkItemCancelApi.InputSerializer(data=example).is_valid()


def test_trigger_body_is_any_json_value(schema):
    body = schema["paths"]["/v1/intake/{intake_id}"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {}  # any value: object, list, ...
