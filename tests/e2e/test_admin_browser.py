"""The admin in a real browser: Playwright driving Debian's chromium (never `playwright
install`), against pytest-django's live server, with a real qcluster where work must finish.

Screenshots of the main pages land in var/screenshots/; with AUXOT_UPDATE_SCREENSHOTS=1 in
docs/screenshots/ (committed, shown in the README).
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from apikeys.models import ApiKey
from apikeys.services import apikey_issue
from auxot.models import AuditEvent
from intakes.models import Intake
from intakes.services import intake_create
from tests.conftest import GREETING, make_workflow
from tests.processes import QCluster
from tests.tools import require_tool
from workflows.models import WorkItem
from workflows.services import work_item_create

# Playwright's sync API runs an event loop in this thread; the ORM calls here are ours.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Screenshots go to var/screenshots (git-ignored) on every run; AUXOT_UPDATE_SCREENSHOTS=1
# writes the committed copies in docs/screenshots that the README shows.
_ROOT = Path(__file__).resolve().parents[2]
SHOTS = _ROOT / ("docs" if os.environ.get("AUXOT_UPDATE_SCREENSHOTS") == "1" else "var") / (
    "screenshots")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = require_tool("chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture
def login(browser, live_server):
    contexts = []

    def open_as(username: str):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        context.set_default_timeout(15000)
        page = context.new_page()
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        return page

    yield open_as
    for context in contexts:
        context.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _sh(command: str, api_key: str) -> str:
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "AUXOT_API_KEY": api_key}, check=False)
    return result.stdout


def _forged_post(page, url: str, form: dict):
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    return page.request.post(url, form=form, headers={"X-CSRFToken": token, "Referer": url})


def test_admin_creates_an_intake_runs_its_curl_then_deactivates_it(login, live_server, cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": GREETING})],
                             name="Greeter")
    token = apikey_issue(org=cast.org_a, label="ci", user=cast.admin_a).token
    page = login("admin_a")
    page.goto(f"{live_server.url}/admin/workflows/workflow/{workflow.pk}/change/")
    page.click(f"a[href$='add/?workflow={workflow.pk}']")  # Path B: prefilled
    assert page.input_value("#id_workflow") == str(workflow.pk)
    page.fill("#id_name", "Support tickets")
    page.click("input[name=_save]")
    secret = page.text_content("code.signing-secret").strip()
    intake = Intake.objects.get(name="Support tickets")
    assert secret.startswith("whsec_") and secret not in page.url
    assert page.url.endswith(f"/admin/intakes/intake/{intake.pk}/signing-secret/")
    page.reload()  # a GET, not the add form again: no second intake, the secret not again
    page.wait_for_selector("#secret-gone")
    assert secret not in page.content() and page.query_selector("code.signing-secret") is None
    assert Intake.objects.filter(name="Support tickets").count() == 1

    page.goto(f"{live_server.url}/admin/intakes/intake/")
    page.click("text=Support tickets")
    page.wait_for_selector("#snippet-curl-trigger")
    assert page.text_content("#intake-id").strip() == str(intake.pk)
    curl = page.text_content("#snippet-curl-trigger")
    assert live_server.url in curl and "$AUXOT_API_KEY" in curl

    answer = _sh(curl, token)
    work_id = re.search(r'"work_id":\s*"([0-9a-f-]{36})"', answer).group(1)
    cluster = QCluster().start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page.goto(f"{live_server.url}/admin/workflows/workitem/?q={work_id}")
            if "Completed" in page.text_content("#result_list"):
                break
            time.sleep(1)
        assert "Completed" in page.text_content("#result_list")
    finally:
        cluster.stop()
    page.click(f"text={work_id}")
    page.wait_for_selector("text=Step timeline")
    assert "Hello, Ada" in page.content()
    assert "work_item.completed" in page.text_content(".field-audit_trail")
    _shot(page, "work-item-trace")
    page.goto(f"{live_server.url}/admin/intakes/intake/")
    row = page.text_content("#result_list tbody tr")
    assert "Support tickets" in row and "never" not in row  # last triggered, 24 h counts
    _shot(page, "intake-list")
    page.goto(f"{live_server.url}/admin/intakes/intake/{intake.pk}/change/")
    assert work_id in page.text_content("#recent-work")
    _shot(page, "intake-detail")

    page.goto(f"{live_server.url}/admin/intakes/intake/{intake.pk}/change/")
    page.click("text=Deactivate")
    page.click("#confirm")
    page.wait_for_selector("text=answer 404 from now on")
    status = _sh(curl + " -o /dev/null -w '%{http_code}'", token)
    assert status == "404"
    page.goto(f"{live_server.url}/admin/auxot/auditevent/")
    assert "intake.deactivated" in page.content()
    _shot(page, "audit-log")


def test_member_sees_a_new_personal_key_exactly_once(login, live_server, cast):
    page = login("member_a")
    page.goto(f"{live_server.url}/admin/apikeys/apikey/add/")
    page.fill("#id_label", "my laptop")
    page.click("input[name=_save]")
    token = page.text_content("#new-token").strip()
    key = ApiKey.objects.get(label="my laptop")
    assert token.startswith("user.") and token.endswith(key.last_four)
    assert key.user == cast.member_a
    page.reload()
    assert page.query_selector("#new-token") is None
    assert token not in page.content() and key.last_four in page.content()
    assert page.query_selector("input[name=_save]") is None  # read-only: nothing to save
    assert page.query_selector("a:text-is('Delete')") is None
    page.click("#revoke-key")  # a confirmation page, then a POST with its CSRF token
    page.click("#confirm")
    page.wait_for_selector("text=answers 401 from now on")
    key.refresh_from_db()
    assert key.revoked_by == cast.member_a
    assert AuditEvent.objects.filter(event="apikey.revoked", object_id=str(key.pk)).exists()
    assert page.query_selector("#revoke-key") is None


def test_auditor_browses_everything_and_changes_nothing(login, live_server, cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": GREETING})])
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Audited",
                           created_by=cast.admin_a)
    from django.db import transaction

    with transaction.atomic():
        item = work_item_create(workflow=workflow, input={"n": 1}, intake=intake)
    page = login("auditor_a")
    for path in ("/admin/workflows/workitem/", f"/admin/workflows/workitem/{item.pk}/change/",
                 "/admin/auxot/auditevent/", "/admin/intakes/intake/",
                 f"/admin/intakes/intake/{intake.pk}/change/", "/admin/apikeys/apikey/",
                 "/admin/intakes/callbackdelivery/", "/admin/workflows/workflow/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        for control in ("select[name=action]", "a.addlink", "a.deletelink",
                        "input[name=_save]", "a:text-is('Run (new task)')",
                        "a:text-is('Deactivate')"):
            assert page.query_selector(control) is None, (path, control)
    cancel = _forged_post(page, f"{live_server.url}/admin/workflows/workitem/",
                          {"action": "cancel_selected", "_selected_action": str(item.pk)})
    assert cancel.status in (200, 302, 403)
    run = _forged_post(page, f"{live_server.url}/admin/workflows/workflow/{workflow.pk}/run/",
                       {"input": "{}"})
    off = _forged_post(page, f"{live_server.url}/admin/intakes/intake/{intake.pk}/active/off/",
                       {})
    assert (run.status, off.status) == (403, 403)
    item.refresh_from_db()
    intake.refresh_from_db()
    assert item.status == WorkItem.Status.PENDING and intake.active
    assert WorkItem.objects.count() == 1
    assert not AuditEvent.objects.filter(event="work_item.canceled").exists()


def test_org_b_admin_cannot_reach_org_a_intake(login, live_server, cast):
    workflow = make_workflow(cast.org_a, [("transform", {"expression": GREETING})])
    intake = intake_create(org=cast.org_a, workflow=workflow, name="Private")
    page = login("outsider_b")
    response = page.goto(f"{live_server.url}/admin/intakes/intake/{intake.pk}/change/")
    assert response.status == 404
    page.goto(f"{live_server.url}/admin/intakes/intake/")
    assert "Private" not in page.content()
