"""Free text a caller stores through the API (an approval's comment, a cancel's or a replay's
reason, the Idempotency-Key and Auxot-Correlation-Id headers) is kept with the work item and
in the audit log, which members, auditors and the audit export read: a credential found in
it by its format (auxot/credentials.py, as in the admin's free text) is refused with 422
`validation_failed`, naming the field and the credential's kind, never echoing it, and
nothing is written.

The fields are not listed by hand: every route's body serializer (InputSerializer) and the
headers serializer are introspected, and each text field is planted here;
test_every_text_field_the_api_stores_is_scanned fails for one that does not scan.
"""

import json

import pytest
from django.urls import URLPattern
from rest_framework import serializers

from auxot.models import AuditLogEntry
from intakes import urls as api_urls
from intakes.api import FreeTextField
from intakes.openapi import TriggerHeadersSerializer
from tests.auxot.test_credential_formats import SAMPLES
from tests.conftest import bearer
from tests.intakes.test_api_audit import CASES
from workflows.models import WorkItem

# Text fields of a request that are not free text a person reads, with why.
NOT_SCANNED: dict[tuple[str, str], str] = {}
PLANTED = [("GitHub token", SAMPLES["GitHub token"][0]),
           ("AWS access key ID", SAMPLES["AWS access key ID"][0]),
           ("private key", SAMPLES["private key"][0])]


def _rows() -> int:
    """Audit rows but the refusal's own `intake.rejected` (its code, never the body)."""
    return AuditLogEntry.objects.exclude(event="intake.rejected").count()


def _assert_not_stored(value: str) -> None:
    for entry in AuditLogEntry.objects.all():
        assert value not in json.dumps(entry.extra)
    assert not WorkItem.objects.filter(correlation_id__contains=value[:20]).exists()


def body_text_fields() -> list[tuple[str, str]]:
    """(route name, field name) for every text field of every route's body serializer."""
    found = []
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view = getattr(pattern.callback, "view_class", None)
        serializer = getattr(view, "InputSerializer", None)
        if serializer is None:
            continue
        for name, field in serializer().fields.items():
            if isinstance(field, serializers.CharField):
                found.append((pattern.name, name))
    return found


def test_the_introspection_finds_the_known_fields():
    assert {("work-item-approval", "comment"), ("work-item-cancel", "reason"),
            ("work-item-replay", "reason")} <= set(body_text_fields())


def test_every_text_field_the_api_stores_is_scanned():
    """A body field is a FreeTextField (which scans) or named in NOT_SCANNED with why; every
    route with a body has a case to plant it in (tests/intakes/test_api_audit.py)."""
    unscanned = []
    for route, name in body_text_fields():
        view = next(p.callback.view_class for p in api_urls.urlpatterns if p.name == route)
        field = view.InputSerializer().fields[name]
        if not isinstance(field, FreeTextField) and (route, name) not in NOT_SCANNED:
            unscanned.append((route, name))
        assert route in CASES
    assert unscanned == []
    # The trigger takes no body serializer: its body is the workflow's input (data the
    # workflow's steps use and the input schema checks), not text kept for people to read.
    assert "intake-trigger" not in {route for route, _ in body_text_fields()}


@pytest.mark.parametrize(("kind", "value"), PLANTED, ids=[k for k, _ in PLANTED])
@pytest.mark.parametrize(("route", "field"), body_text_fields())
def test_a_credential_in_a_body_field_is_refused_and_nothing_is_written(
        api, cast, member_token, route, field, kind, value):
    build, suffix, body, _event = CASES[route]
    intake, item = build(cast)
    before = (_rows(), WorkItem.objects.count(), WorkItem.objects.get(pk=item.pk).status)
    planted = {**body, field: f"Done, see {value} for details."}
    response = api.post(f"/v1/intake/{intake.pk}/work/{item.pk}{suffix}",
                        data=json.dumps(planted), content_type="application/json",
                        **bearer(member_token))
    assert response.status_code == 422, response.content[:300]
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert problem["detail"].startswith(f"{field}: a") and kind in problem["detail"]
    assert problem["errors"][0]["pointer"] == f"/{field}"
    assert value not in response.content.decode()
    assert (_rows(), WorkItem.objects.count(),
            WorkItem.objects.get(pk=item.pk).status) == before
    _assert_not_stored(value)


@pytest.mark.parametrize(("route", "field"), body_text_fields())
def test_ordinary_text_is_stored(api, cast, member_token, route, field):
    build, suffix, body, _event = CASES[route]
    intake, item = build(cast)
    response = api.post(f"/v1/intake/{intake.pk}/work/{item.pk}{suffix}",
                        data=json.dumps({**body, field: "Checked ASIAPACIFICSALESTEAM docs; "
                                         "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}),
                        content_type="application/json", **bearer(member_token))
    assert response.status_code in (200, 202), response.content[:300]


HEADERS = [field.label for field in TriggerHeadersSerializer._declared_fields.values()]


def test_the_headers_serializer_has_the_known_headers():
    assert {"Idempotency-Key", "Auxot-Correlation-Id"} <= set(HEADERS)


@pytest.mark.parametrize(("kind", "value"), PLANTED[:2], ids=[k for k, _ in PLANTED[:2]])
@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("route", ["intake-trigger", "work-item-replay"])
def test_a_credential_in_a_stored_header_is_refused_and_nothing_is_written(
        api, cast, member_token, route, header, kind, value):
    build, suffix, body, _event = CASES[route]
    intake, item = build(cast)
    before = (_rows(), WorkItem.objects.count())
    path = f"/v1/intake/{intake.pk}" + (f"/work/{item.pk}{suffix}" if item else "")
    meta = {"HTTP_" + header.upper().replace("-", "_"): f"run {value}"}
    response = api.post(path, data=json.dumps(body), content_type="application/json",
                        **bearer(member_token), **meta)
    assert response.status_code == 422, response.content[:300]
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert problem["detail"].startswith(f"{header}: a") and kind in problem["detail"]
    assert value not in response.content.decode()
    assert (_rows(), WorkItem.objects.count()) == before
    _assert_not_stored(value)
