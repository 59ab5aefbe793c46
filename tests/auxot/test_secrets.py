"""Organization secrets: every reference form, for http steps and providers, against a real
receiver; host binding; encryption at rest; the admin (write-only value, roles); the
operator's env grants; `manage.py secrets_check`."""

import json
import re
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.db import connection

from auxot.models import AuditEvent, Secret
from auxot.secrets import secret_create, secret_delete, secret_rotate, secret_update_hosts
from auxot.settings import env_operator_secrets
from tests.conftest import make_workflow
from tests.fakeserver import chat
from workflows.batch import work_item_process
from workflows.models import Provider, Step, Workflow, WorkItem
from workflows.presenters import work_item_view
from workflows.services import work_item_create

PAY = "pay-A-7f3c9e1d"  # org A's PAYMENTS_TOKEN
OTHER = "b-only-value-55aa"  # org B's secret
GRANTED = "granted-env-value-91"
LEAKS = ["env-secret-key-leak", "postgres://leak@db/x", "setting-only-leak", "not-granted-x"]
SECRETS = "/admin/auxot/secret/"


@pytest.fixture
def world(cast, settings, monkeypatch):
    """Org A has PAYMENTS_TOKEN (bound to 127.0.0.1) and a grant for GRANTED_TOKEN; org B
    has B_ONLY; the environment holds server secrets the tenant must never reach."""
    secret_create(org=cast.org_a, name="PAYMENTS_TOKEN", value=PAY, allowed_hosts=["127.0.0.1"],
                  actor=cast.admin_a)
    secret_create(org=cast.org_b, name="B_ONLY", value=OTHER, allowed_hosts=["127.0.0.1"])
    settings.AUXOT_OPERATOR_SECRETS = {"org-a": {"GRANTED_TOKEN": None, "ONLY_A_SETTING": None}}
    monkeypatch.setenv("GRANTED_TOKEN", GRANTED)
    monkeypatch.setenv("SECRET_KEY", LEAKS[0])
    monkeypatch.setenv("DATABASE_URL", LEAKS[1])
    monkeypatch.setenv("UNGRANTED_TOKEN", LEAKS[3])
    monkeypatch.delenv("ONLY_A_SETTING", raising=False)
    settings.ONLY_A_SETTING = LEAKS[2]
    settings.PAYMENTS_SETTING = LEAKS[2]
    return cast


def _run(item):
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return item


def _received(receiver) -> list:
    return [request for request, _ in receiver.log]


def _http_item(cast, receiver, ref, url=None):
    receiver.expect_request("/hook").respond_with_json({"ok": True})
    wf = make_workflow(cast.org_a, [("http", {
        "method": "POST", "url": url or receiver.url_for("/hook"),
        "secret_headers": {"Authorization": ref}})])
    return _run(work_item_create(workflow=wf, input={}))


def _provider_item(cast, receiver, *, secret="", env="", base=None):
    receiver.expect_request("/v1/chat/completions").respond_with_json(chat("hi"))
    Provider.objects.create(org=cast.org_a, name="ai", base_url=base or receiver.url_for("/v1"),
                            model="m", api_key_secret=secret, api_key_env=env)
    wf = make_workflow(cast.org_a, [("agent", {"provider": "ai", "prompt": "Hi"})], name="AI")
    return _run(work_item_create(workflow=wf, input={}))


def _visible(item) -> str:
    """Everything Auxot shows about the item: the poll body and the stored rows."""
    return json.dumps([work_item_view(item).body, item.error, item.output,
                       list(item.step_runs.values("output", "error", "state")),
                       list(AuditEvent.objects.values("extra"))], default=str)


# (reference, what an http step / a provider gets: "sent:<value>" or a failure code)
CASES = {
    "org secret": ({"secret": "PAYMENTS_TOKEN"}, f"sent:{PAY}"),
    "env granted": ({"env": "GRANTED_TOKEN"}, f"sent:{GRANTED}"),
    "env not granted": ({"env": "UNGRANTED_TOKEN"}, "secret_not_allowed"),
    "env SECRET_KEY": ({"env": "SECRET_KEY"}, "secret_not_allowed"),
    "env DATABASE_URL": ({"env": "DATABASE_URL"}, "secret_not_allowed"),
    "a Django setting, not an env var": ({"env": "PAYMENTS_SETTING"}, "secret_not_allowed"),
    "granted, but only a Django setting": ({"env": "ONLY_A_SETTING"}, "missing_secret"),
    "another org's secret": ({"secret": "B_ONLY"}, "missing_secret"),
    "unknown secret": ({"secret": "NOPE"}, "missing_secret"),
}


class TestEveryReferenceForm:
    @pytest.mark.parametrize("case", CASES)
    def test_http_step(self, world, receiver, case):
        ref, expected = CASES[case]
        item = _http_item(world, receiver, {**ref, "prefix": "Bearer "})
        self._check(item, receiver, ref, expected)

    @pytest.mark.parametrize("case", CASES)
    def test_provider(self, world, receiver, case):
        ref, expected = CASES[case]
        item = _provider_item(world, receiver, secret=ref.get("secret", ""),
                              env=ref.get("env", ""))
        self._check(item, receiver, ref, expected)

    def _check(self, item, receiver, ref, expected):
        received = _received(receiver)
        if expected.startswith("sent:"):
            assert item.status == "completed", item.error
            assert [r.headers["Authorization"] for r in received] == [
                f"Bearer {expected[5:]}"]
            assert expected[5:] not in _visible(item)
            return
        assert item.status == "failed"
        assert item.error["code"] == expected
        assert (ref.get("secret") or ref.get("env")) in item.error["message"]
        assert received == []  # nothing sent at all, not even without the header
        for value in (PAY, OTHER, GRANTED, *LEAKS):
            assert value not in _visible(item)
        if expected == "secret_not_allowed":
            assert "create an organization secret in the admin" in item.error["message"]

    @pytest.mark.parametrize("target", ["http", "provider"])
    def test_deleted_secret_is_missing(self, world, receiver, target):
        secret_delete(secret=Secret.objects.get(name="PAYMENTS_TOKEN"), actor=world.admin_a)
        item = (_http_item(world, receiver, {"secret": "PAYMENTS_TOKEN"}) if target == "http"
                else _provider_item(world, receiver, secret="PAYMENTS_TOKEN"))
        assert item.error["code"] == "missing_secret"
        assert _received(receiver) == []

    @pytest.mark.parametrize("target", ["http", "provider"])
    def test_rotated_secret_sends_the_new_value(self, world, receiver, target):
        secret_rotate(secret=Secret.objects.get(name="PAYMENTS_TOKEN"), value="rotated-2")
        item = (_http_item(world, receiver, {"secret": "PAYMENTS_TOKEN", "prefix": "Bearer "})
                if target == "http" else _provider_item(world, receiver, secret="PAYMENTS_TOKEN"))
        assert item.status == "completed"
        assert [r.headers["Authorization"] for r in _received(receiver)] == ["Bearer rotated-2"]

    @pytest.mark.parametrize("ref", [
        "Bearer literal", {"secret": "A", "env": "B"}, {}, {"secret": "bad name"},
        {"secret": "X", "extra": 1}, {"env": "1BAD"}, {"secret": ["X"]},
        {"secret": "PAYMENTS_TOKEN", "prefix": "x\r\nEvil: 1"}, {"secret": "PAYMENTS_TOKEN",
                                                                 "prefix": 7},
    ])
    def test_malformed_step_reference_fails_at_run_and_save(self, world, receiver, ref):
        item = _http_item(world, receiver, ref)
        assert item.error["code"] == "bad_config"
        assert _received(receiver) == []
        step = Step.objects.get(workflow__org=world.org_a)
        with pytest.raises(ValidationError):
            step.full_clean()

    @pytest.mark.parametrize("name", ["bad name", "-x", "has/slash"])
    def test_malformed_provider_reference_fails_at_run_and_save(self, world, receiver, name):
        item = _provider_item(world, receiver, secret=name)
        assert item.error["code"] == "bad_config"
        assert _received(receiver) == []
        with pytest.raises(ValidationError):
            Provider.objects.get(name="ai").full_clean()


class TestHostBinding:
    def test_static_url_to_another_host_is_refused_and_sends_nothing(self, world, receiver):
        secret_update_hosts(secret=Secret.objects.get(name="PAYMENTS_TOKEN"),
                            allowed_hosts=["api.example.com"])
        item = _http_item(world, receiver, {"secret": "PAYMENTS_TOKEN"})
        assert item.error["code"] == "secret_host_refused"
        assert "127.0.0.1" in item.error["message"]
        assert "PAYMENTS_TOKEN" in item.error["message"]
        assert PAY not in _visible(item)
        assert _received(receiver) == []

    def test_url_expression_is_checked_against_the_final_url(self, world, receiver):
        receiver.expect_request("/hook").respond_with_json({})
        wf = make_workflow(world.org_a, [("http", {
            "url_expression": "input.target",
            "secret_headers": {"X-Pay": {"secret": "PAYMENTS_TOKEN"}}})])
        allowed = receiver.url_for("/hook")
        refused = allowed.replace("127.0.0.1", "localhost")
        bad = _run(work_item_create(workflow=wf, input={"target": refused}))
        assert bad.error["code"] == "secret_host_refused"
        assert "localhost" in bad.error["message"]
        assert _received(receiver) == []
        good = _run(work_item_create(workflow=wf, input={"target": allowed}))
        assert good.status == "completed"
        assert [r.headers["X-Pay"] for r in _received(receiver)] == [PAY]

    @pytest.mark.parametrize("trick", [
        "http://127.0.0.1:{port}\\@evil.example.com/hook",
        "http://evil.example.com@127.0.0.1:{port}/hook",
        "http://127.0.0.1:{port}@evil.example.com/hook",
    ])
    def test_urls_that_parsers_read_differently_are_refused(self, world, receiver, trick):
        receiver.expect_request("/hook").respond_with_json({})
        wf = make_workflow(world.org_a, [("http", {
            "url_expression": "input.target",
            "secret_headers": {"X-Pay": {"secret": "PAYMENTS_TOKEN"}}})])
        item = _run(work_item_create(workflow=wf, input={
            "target": trick.format(port=receiver.port)}))
        assert item.error["code"] == "secret_host_refused"
        assert _received(receiver) == []

    def test_provider_base_url_host_is_checked(self, world, receiver):
        secret_update_hosts(secret=Secret.objects.get(name="PAYMENTS_TOKEN"),
                            allowed_hosts=["*.openai.example"])
        item = _provider_item(world, receiver, secret="PAYMENTS_TOKEN")
        assert item.error["code"] == "secret_host_refused"
        assert _received(receiver) == []

    def test_wildcard_matches_subdomains_only(self):
        from auxot.hosts import host_allowed

        assert host_allowed("api.example.com", ["*.example.com"])
        assert not host_allowed("example.com", ["*.example.com"])
        assert not host_allowed("evilexample.com", ["*.example.com"])
        assert not host_allowed("api.example.com.evil.net", ["*.example.com"])

    @pytest.mark.parametrize("hosts", [[], ["*"], ["*.com"], ["https://a.example"],
                                       ["a.example:443"], ["a/b"], "a.example", [""]])
    def test_bad_host_lists_are_refused(self, world, hosts):
        from auxot.errors import ApplicationError

        with pytest.raises(ApplicationError):
            secret_create(org=world.org_a, name="X", value="v", allowed_hosts=hosts)
        assert not Secret.objects.filter(name="X").exists()

    def test_operator_grant_can_be_host_bound(self, world, receiver, settings):
        settings.AUXOT_OPERATOR_SECRETS = {"org-a": {"GRANTED_TOKEN": ["api.example.com"]}}
        item = _http_item(world, receiver, {"env": "GRANTED_TOKEN"})
        assert item.error["code"] == "secret_host_refused"
        assert _received(receiver) == []


class TestSaveTimeValidation:
    def _step(self, cast, ref, url="http://127.0.0.1/hook"):
        wf = make_workflow(cast.org_a, [])
        return Step(workflow=wf, position=1, name="Call", kind="http",
                    config={"url": url, "secret_headers": {"Authorization": ref}})

    @pytest.mark.parametrize("ref,named", [
        ({"secret": "NOPE"}, "NOPE"), ({"secret": "B_ONLY"}, "B_ONLY"),
        ({"env": "SECRET_KEY"}, "SECRET_KEY"), ({"env": "UNGRANTED_TOKEN"}, "UNGRANTED_TOKEN"),
    ])
    def test_unresolvable_step_reference_is_a_clear_error(self, world, ref, named):
        with pytest.raises(ValidationError) as exc:
            self._step(world, ref).full_clean()
        assert named in str(exc.value)

    def test_static_url_outside_the_secrets_hosts_is_an_error(self, world):
        with pytest.raises(ValidationError, match=r"api\.example\.net"):
            self._step(world, {"secret": "PAYMENTS_TOKEN"}, "https://api.example.net/x"
                       ).full_clean()

    @pytest.mark.parametrize("ref", [{"secret": "PAYMENTS_TOKEN", "prefix": "Bearer "},
                                     {"env": "GRANTED_TOKEN"}])
    def test_resolvable_step_reference_saves(self, world, ref):
        self._step(world, ref).full_clean()

    @pytest.mark.parametrize("fields,named", [
        ({"api_key_secret": "NOPE"}, "NOPE"), ({"api_key_secret": "B_ONLY"}, "B_ONLY"),
        ({"api_key_env": "DATABASE_URL"}, "DATABASE_URL"),
        ({"api_key_secret": "PAYMENTS_TOKEN", "api_key_env": "GRANTED_TOKEN"}, "not both"),
    ])
    def test_unresolvable_provider_reference_is_a_clear_error(self, world, fields, named):
        provider = Provider(org=world.org_a, name="p", base_url="http://127.0.0.1/v1",
                            model="m", **fields)
        with pytest.raises(ValidationError) as exc:
            provider.full_clean()
        assert named in str(exc.value)


class TestReproduction:
    """Org B's admin sets up an http step reaching SECRET_KEY, DATABASE_URL and org A's
    PAYMENTS_TOKEN and runs it with New task: nothing reaches the listener or any page."""

    CONFIG_REFS = {"X-Sk": {"env": "SECRET_KEY"}, "X-Db": {"env": "DATABASE_URL"},
                   "X-Pay": {"env": "PAYMENTS_TOKEN"}}

    def _add_workflow_in_admin(self, client, cast, receiver):
        client.force_login(cast.outsider_b)
        page = client.get("/admin/workflows/workflow/add/").content.decode()
        data = {"org": cast.org_b.pk, "name": "Leak", "slug": "leak", "active": "on"}
        for prefix in re.findall(r'name="([\w-]+)-TOTAL_FORMS"', page):
            data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
        data.update({"steps-TOTAL_FORMS": "1", "steps-0-position": "1", "steps-0-name": "x",
                     "steps-0-kind": "http", "steps-0-config": json.dumps({
                         "method": "POST", "url": receiver.url_for("/hook"),
                         "secret_headers": self.CONFIG_REFS})})
        return client.post("/admin/workflows/workflow/add/", data)

    def test_admin_refuses_the_step(self, world, client, receiver, monkeypatch):
        monkeypatch.setenv("PAYMENTS_TOKEN", PAY)
        response = self._add_workflow_in_admin(client, world, receiver)
        html = response.content.decode()
        assert response.status_code == 200  # the form again, with errors
        for name in ("SECRET_KEY", "DATABASE_URL", "PAYMENTS_TOKEN"):
            assert f'{{&quot;env&quot;: &quot;{name}&quot;}} is not allowed' in html
        assert not Workflow.objects.filter(slug="leak").exists()

    def test_legacy_step_run_with_new_task_sends_nothing(self, world, client, receiver,
                                                         monkeypatch):
        monkeypatch.setenv("PAYMENTS_TOKEN", PAY)
        receiver.expect_request("/hook").respond_with_json({})
        wf = make_workflow(world.org_b, [("http", {
            "method": "POST", "url": receiver.url_for("/hook"),
            "secret_headers": self.CONFIG_REFS})], name="Leak")
        client.force_login(world.outsider_b)
        client.post(f"/admin/workflows/workflow/{wf.pk}/run/", {"input": "{}"})
        item = _run(WorkItem.objects.get(workflow=wf))
        assert item.error["code"] == "secret_not_allowed"
        assert _received(receiver) == []
        page = client.get(f"/admin/workflows/workitem/{item.pk}/change/").content.decode()
        from django.conf import settings

        for value in (settings.SECRET_KEY, *LEAKS, PAY):
            assert value not in page
            assert value not in _visible(item)


class TestStorageAndAudit:
    def test_database_column_never_holds_the_plain_value(self, world):
        with connection.cursor() as cursor:
            cursor.execute("SELECT value_encrypted, allowed_hosts FROM auxot_secret")
            rows = cursor.fetchall()
        assert len(rows) == 2
        assert not any(PAY in str(row) or OTHER in str(row) for row in rows)

    def test_audit_rows_carry_name_and_hosts_never_the_value(self, world):
        secret = Secret.objects.get(name="PAYMENTS_TOKEN")
        secret_rotate(secret=secret, value="new-value-123", actor=world.admin_a)
        secret_update_hosts(secret=secret, allowed_hosts=["a.example"], actor=world.admin_a)
        secret_delete(secret=secret, actor=world.admin_a)
        events = AuditEvent.objects.filter(object_type="auxot.secret", org=world.org_a)
        assert sorted(events.values_list("event", flat=True)) == [
            "secret.created", "secret.deleted", "secret.hosts_changed", "secret.rotated"]
        assert {e.extra["name"] for e in events} == {"PAYMENTS_TOKEN"}
        assert events.get(event="secret.hosts_changed").extra["allowed_hosts"] == ["a.example"]
        dump = json.dumps(list(events.values("extra", "actor_label")))
        assert PAY not in dump and "new-value-123" not in dump

    def test_a_rotated_secret_key_still_decrypts_through_the_fallbacks(self, world, receiver,
                                                                       settings):
        settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
        settings.SECRET_KEY = "a-brand-new-secret-key"
        item = _http_item(world, receiver, {"secret": "PAYMENTS_TOKEN"})
        assert item.status == "completed"
        assert [r.headers["Authorization"] for r in _received(receiver)] == [PAY]

    def test_a_lost_secret_key_fails_clearly_and_sends_nothing(self, world, receiver, settings):
        settings.SECRET_KEY = "a-brand-new-secret-key"
        item = _http_item(world, receiver, {"secret": "PAYMENTS_TOKEN"})
        assert item.error["code"] == "missing_secret"
        assert "cannot be decrypted" in item.error["message"]
        assert _received(receiver) == []

    def test_value_with_a_line_break_is_refused(self, world):
        from auxot.errors import ApplicationError

        with pytest.raises(ApplicationError):
            secret_create(org=world.org_a, name="CRLF", value="a\r\nb", allowed_hosts=["x.io"])


class TestAdmin:
    def _add(self, client, cast, **extra):
        data = {"org": cast.org_a.pk, "name": "CRM", "value": "crm-value-abc",
                "hosts": "api.example.com\n*.crm.example"}
        return client.post(f"{SECRETS}add/", {**data, **extra})

    def test_admin_creates_rotates_rebinds_and_deletes_without_the_value_rendered(
            self, world, client):
        client.force_login(world.admin_a)
        assert self._add(client, world).status_code == 302
        secret = Secret.objects.get(name="CRM")
        assert secret.allowed_hosts == ["api.example.com", "*.crm.example"]
        url = f"{SECRETS}{secret.pk}/change/"
        page = client.get(url).content.decode()
        assert 'type="password"' in page and "crm-value-abc" not in page
        assert client.post(url, {"value": "", "hosts": "api.example.com"}).status_code == 302
        secret.refresh_from_db()
        assert secret.rotated_at is None and secret.allowed_hosts == ["api.example.com"]
        response = client.post(url, {"value": "crm-value-2", "hosts": "api.example.com"},
                               follow=True)
        assert "crm-value-2" not in response.content.decode()
        secret.refresh_from_db()
        assert secret.rotated_at is not None
        for page_url in (url, f"{url.rsplit('change/', 1)[0]}history/", SECRETS,
                         "/admin/auxot/auditevent/"):
            html = client.get(page_url).content.decode()
            assert "crm-value" not in html, page_url
        client.post(f"{SECRETS}{secret.pk}/delete/", {"post": "yes"})
        assert not Secret.objects.filter(name="CRM").exists()
        assert list(AuditEvent.objects.filter(extra__name="CRM").order_by("created_at")
                    .values_list("event", flat=True)) == [
            "secret.created", "secret.hosts_changed", "secret.rotated", "secret.deleted"]

    @pytest.mark.parametrize("page", ["add", "change"])
    def test_a_failing_save_reports_the_error_without_the_value(self, world, client, caplog,
                                                                monkeypatch, page):
        """An error report (Django's mail to ADMINS, Sentry) filters POST parameters marked
        sensitive: the value typed in never reaches it."""
        from django.views.debug import SafeExceptionReporterFilter

        import auxot.admin

        def broken(**kwargs):
            raise RuntimeError("database went away")

        monkeypatch.setattr(auxot.admin, "secret_create", broken)
        monkeypatch.setattr(auxot.admin, "secret_rotate", broken)
        client.force_login(world.admin_a)
        client.raise_request_exception = False
        if page == "add":
            response = self._add(client, world, value="typed-value-xyz")
        else:
            secret = Secret.objects.get(name="PAYMENTS_TOKEN")
            response = client.post(f"{SECRETS}{secret.pk}/change/",
                                   {"value": "typed-value-xyz", "hosts": "127.0.0.1"})
        assert response.status_code == 500
        [record] = [r for r in caplog.records if r.name == "django.request"]
        shown = SafeExceptionReporterFilter().get_post_parameters(record.request)
        assert shown["value"] != "typed-value-xyz" and set(shown["value"]) == {"*"}

    def test_bad_value_or_hosts_redisplay_without_the_value(self, world, client):
        client.force_login(world.admin_a)
        html = self._add(client, world, hosts="https://x/").content.decode()
        assert "not a host name" in html and "crm-value-abc" not in html
        html = self._add(client, world, name="PAYMENTS_TOKEN").content.decode()
        assert "already exists" in html
        assert Secret.objects.filter(org=world.org_a).count() == 1

    @pytest.mark.parametrize("who", ["member_a", "auditor_a"])
    def test_members_and_auditors_see_names_and_hosts_only(self, world, client, who):
        client.force_login(getattr(world, who))
        secret = Secret.objects.get(name="PAYMENTS_TOKEN")
        listing = client.get(SECRETS).content.decode()
        assert "PAYMENTS_TOKEN" in listing and "127.0.0.1" in listing
        page = client.get(f"{SECRETS}{secret.pk}/change/")
        assert page.status_code == 200 and 'type="password"' not in page.content.decode()
        assert self._add(client, world).status_code == 403
        client.post(f"{SECRETS}{secret.pk}/change/", {"value": "x", "hosts": "evil.example"})
        client.post(f"{SECRETS}{secret.pk}/delete/", {"post": "yes"})
        secret.refresh_from_db()
        assert secret.rotated_at is None and secret.allowed_hosts == ["127.0.0.1"]
        assert Secret.objects.filter(pk=secret.pk).exists()

    def test_outsider_gets_404_for_another_orgs_secret(self, world, client):
        client.force_login(world.outsider_b)
        secret = Secret.objects.get(name="PAYMENTS_TOKEN")
        for suffix in ("change/", "delete/", "history/"):
            assert client.get(f"{SECRETS}{secret.pk}/{suffix}").status_code == 404
        client.post(f"{SECRETS}{secret.pk}/delete/", {"post": "yes"})
        assert "PAYMENTS_TOKEN" not in client.get(SECRETS).content.decode()
        response = self._add(client, world)  # org A is not a choice for org B's admin
        assert response.status_code == 200 and not Secret.objects.filter(name="CRM").exists()
        assert Secret.objects.filter(pk=secret.pk).exists()


class TestOperatorSetting:
    @pytest.mark.parametrize("raw", [
        "not json", "[]", '{"org-a": "X"}', '{"org-a": ["1X"]}', '{"org-a": ["SECRET_KEY"]}',
        '{"org-a": ["DATABASE_URL"]}', '{"org-a": ["AUXOT_ANYTHING"]}',
        '{"org-a": {"X": ["*"]}}',
    ])
    def test_malformed_grants_fail_at_start(self, monkeypatch, raw):
        monkeypatch.setenv("AUXOT_OPERATOR_SECRETS", raw)
        with pytest.raises(ImproperlyConfigured):
            env_operator_secrets("AUXOT_OPERATOR_SECRETS")

    def test_grants_parse_lists_and_host_maps(self, monkeypatch):
        monkeypatch.setenv("AUXOT_OPERATOR_SECRETS",
                           '{"org-a": ["A_KEY"], "org-b": {"B_KEY": ["API.Example.com"]}}')
        assert env_operator_secrets("AUXOT_OPERATOR_SECRETS") == {
            "org-a": {"A_KEY": None}, "org-b": {"B_KEY": ["api.example.com"]}}

    def test_a_grant_is_for_its_org_only(self, world, receiver, settings):
        settings.AUXOT_OPERATOR_SECRETS = {"org-b": ["GRANTED_TOKEN"]}
        item = _http_item(world, receiver, {"env": "GRANTED_TOKEN"})
        assert item.error["code"] == "secret_not_allowed"
        assert _received(receiver) == []


TOKEN = "xoxHookT0ken9"  # the credential in a chat webhook's path
HOOK_PATH = f"/services/T0AB12/B0CD34/{TOKEN}"

# (the url_secret reference, what the step does: "sent" or a failure code)
URL_CASES = {
    "org secret": ({"secret": "HOOK_URL"}, "sent"),
    "env granted": ({"env": "GRANTED_HOOK"}, "sent"),
    "env not granted": ({"env": "UNGRANTED_TOKEN"}, "secret_not_allowed"),
    "env SECRET_KEY": ({"env": "SECRET_KEY"}, "secret_not_allowed"),
    "env DATABASE_URL (a URL)": ({"env": "DATABASE_URL"}, "secret_not_allowed"),
    "a Django setting, not an env var": ({"env": "PAYMENTS_SETTING"}, "secret_not_allowed"),
    "another org's secret": ({"secret": "B_HOOK"}, "missing_secret"),
    "unknown secret": ({"secret": "NOPE"}, "missing_secret"),
    "a secret that is not a URL": ({"secret": "PAYMENTS_TOKEN"}, "bad_request"),
    "a URL its secret is not bound to": ({"secret": "ELSEWHERE_HOOK"}, "secret_host_refused"),
    "a URL with user info": ({"secret": "USERINFO_HOOK"}, "secret_host_refused"),
    "an internal address": ({"secret": "INTERNAL_HOOK"}, "ssrf_refused"),
}


class TestUrlSecret:
    """`url_secret`: an http step whose URL is itself the credential (a chat webhook) names an
    organization secret instead of holding the URL; the URL goes only where it points, and
    only if the secret is bound to that host."""

    @pytest.fixture
    def hooks(self, world, receiver, settings, monkeypatch):
        url = receiver.url_for(HOOK_PATH)
        secret_create(org=world.org_a, name="HOOK_URL", value=url, allowed_hosts=["127.0.0.1"])
        secret_create(org=world.org_b, name="B_HOOK", value=url, allowed_hosts=["127.0.0.1"])
        secret_create(org=world.org_a, name="ELSEWHERE_HOOK", value=url,
                      allowed_hosts=["hooks.example.com"])
        secret_create(org=world.org_a, name="USERINFO_HOOK", allowed_hosts=["127.0.0.1"],
                      value=url.replace("http://", f"http://u:{TOKEN}@"))
        secret_create(org=world.org_a, name="INTERNAL_HOOK", allowed_hosts=["10.1.2.3"],
                      value=f"http://10.1.2.3{HOOK_PATH}")
        settings.AUXOT_OPERATOR_SECRETS = {"org-a": {**settings.AUXOT_OPERATOR_SECRETS["org-a"],
                                                     "GRANTED_HOOK": ["127.0.0.1"]}}
        monkeypatch.setenv("GRANTED_HOOK", url)
        return world

    def _item(self, cast, ref, **config):
        wf = make_workflow(cast.org_a, [("http", {"method": "POST", "url_secret": ref,
                                                  "body": "input", **config})],
                           name=f"Hook {Workflow.objects.count()}")
        return _run(work_item_create(workflow=wf, input={"n": 1}))

    @pytest.mark.parametrize("case", URL_CASES)
    def test_every_reference_form(self, hooks, receiver, case):
        ref, expected = URL_CASES[case]
        receiver.expect_request(HOOK_PATH, method="POST").respond_with_json({"ok": True})
        item = self._item(hooks, ref)
        shown = _visible(item) + json.dumps(list(Step.objects.values("config")))
        for value in (TOKEN, PAY, OTHER, GRANTED, *LEAKS):
            assert value not in shown
        if expected == "sent":
            assert item.status == "completed", item.error
            assert [(r.path, r.json) for r in _received(receiver)] == [(HOOK_PATH, {"n": 1})]
            return
        assert item.status == "failed"
        assert item.error["code"] == expected, item.error
        assert (ref.get("secret") or ref.get("env")) in item.error["message"] or (
            expected == "ssrf_refused" and "10.1.2.3" in item.error["message"])
        assert _received(receiver) == []

    def test_a_failure_names_the_host_not_the_token(self, hooks, receiver):
        receiver.expect_request(HOOK_PATH).respond_with_json({}, status=404)
        item = self._item(hooks, {"secret": "HOOK_URL"})
        assert item.error["code"] == "http_error"
        assert f"{receiver.url_for('/services')}/REDACTED/REDACTED/REDACTED" in \
            item.error["message"]
        assert TOKEN not in _visible(item)

    # How a receiver quotes what it was sent: a redirect to https, an error page, an echo.
    QUOTES = {
        "location": lambda quoted: ("", 301, {"Location": quoted}),
        "text": lambda quoted: (f"Moved Permanently: {quoted}", 200,
                                {"Content-Type": "text/plain"}),
        "json": lambda quoted: (json.dumps({"echo": quoted, quoted: [quoted]}), 200,
                                {"Content-Type": "application/json"}),
    }

    @pytest.mark.parametrize("how", QUOTES)
    def test_an_answer_quoting_what_was_sent_shows_no_secret_in_the_output(self, hooks,
                                                                            receiver, how):
        url = receiver.url_for(HOOK_PATH) + "?key=QueryS3cret77&format=json"
        secret_create(org=hooks.org_a, name="QUERY_HOOK", value=url, allowed_hosts=["127.0.0.1"])
        quoted = " ".join([url.replace("http://", "https://"), f"Bearer {PAY}", GRANTED])
        body, status, headers = self.QUOTES[how](quoted)
        receiver.expect_request(HOOK_PATH).respond_with_data(body, status, headers)
        item = self._item(hooks, {"secret": "QUERY_HOOK"}, response_headers=["location"],
                          secret_headers={
                              "Authorization": {"secret": "PAYMENTS_TOKEN", "prefix": "Bearer "},
                              "X-Granted": {"env": "GRANTED_TOKEN"}})
        assert item.status == "completed", item.error
        assert [r.headers["X-Granted"] for r in _received(receiver)] == [GRANTED]
        shown = _visible(item)
        for value in (TOKEN, "QueryS3cret77", PAY, GRANTED):
            assert value not in shown
        assert "REDACTED" in json.dumps(item.output)

    def test_secret_headers_are_bound_to_the_secret_urls_host(self, hooks, receiver):
        receiver.expect_request(HOOK_PATH).respond_with_json({})
        item = self._item(hooks, {"secret": "HOOK_URL"}, secret_headers={
            "X-Pay": {"secret": "PAYMENTS_TOKEN"}})
        assert item.status == "completed", item.error
        assert [r.headers["X-Pay"] for r in _received(receiver)] == [PAY]
        secret_update_hosts(secret=Secret.objects.get(name="PAYMENTS_TOKEN"),
                            allowed_hosts=["api.example.com"])
        item = self._item(hooks, {"secret": "HOOK_URL"}, secret_headers={
            "X-Pay": {"secret": "PAYMENTS_TOKEN"}})
        assert item.error["code"] == "secret_host_refused"
        assert len(_received(receiver)) == 1  # nothing more sent

    def test_a_rotated_url_is_used_from_the_next_run(self, hooks, receiver):
        receiver.expect_request("/services/new").respond_with_json({})
        secret_rotate(secret=Secret.objects.get(name="HOOK_URL"),
                      value=receiver.url_for("/services/new"))
        item = self._item(hooks, {"secret": "HOOK_URL"})
        assert item.status == "completed", item.error
        assert [r.path for r in _received(receiver)] == ["/services/new"]

    @pytest.mark.parametrize("config,named", [
        ({"url_secret": {"secret": "HOOK_URL"}, "url": "https://a.example/x"}, "exactly one"),
        ({"url_secret": {"secret": "HOOK_URL"}, "url_expression": "input.u"}, "exactly one"),
        ({"url_secret": {"secret": "HOOK_URL", "prefix": "https://"}}, "prefix"),
        ({"url_secret": "https://hooks.example.com/services/T/B/x"}, "url_secret must be"),
        ({"url_secret": {"secret": "bad name"}}, "url_secret"),
        ({"url_secret": {"secret": "NOPE"}}, "NOPE"),
        ({"url_secret": {"secret": "B_HOOK"}}, "B_HOOK"),
        ({"url_secret": {"env": "SECRET_KEY"}}, "SECRET_KEY"),
    ])
    def test_bad_config_is_refused_when_saved(self, hooks, config, named):
        wf = make_workflow(hooks.org_a, [])
        step = Step(workflow=wf, position=1, name="Call", kind="http", config=config)
        with pytest.raises(ValidationError) as exc:
            step.full_clean()
        assert named in str(exc.value)
        assert TOKEN not in str(exc.value)

    @pytest.mark.parametrize("ref", [{"secret": "HOOK_URL"}, {"env": "GRANTED_HOOK"}])
    def test_a_resolvable_reference_saves(self, hooks, ref):
        wf = make_workflow(hooks.org_a, [])
        Step(workflow=wf, position=1, name="Call", kind="http",
             config={"url_secret": ref}).full_clean()

    def test_secrets_check_lists_every_url_secret_that_would_fail(self, hooks):
        for name in ("GONE", "HOOK_URL", "PAYMENTS_TOKEN", "ELSEWHERE_HOOK"):
            make_workflow(hooks.org_a, [("http", {"url_secret": {"secret": name}})],
                          name=f"Hook {name.replace('_', ' ')}")
        out = StringIO()
        with pytest.raises(SystemExit):
            call_command("secrets_check", stdout=out, stderr=StringIO())
        lines = out.getvalue().splitlines()
        assert len(lines) == 3, lines  # HOOK_URL resolves
        for name, problem in (("GONE", "no secret named GONE"),
                              ("PAYMENTS_TOKEN", "does not hold an absolute http(s) URL"),
                              ("ELSEWHERE_HOOK", "may not be sent to host 127.0.0.1")):
            assert any(name in line and problem in line for line in lines), (name, lines)
        assert TOKEN not in out.getvalue() and PAY not in out.getvalue()


class TestSecretsCheck:
    def test_lists_every_unresolvable_reference_and_exits_1(self, world):
        make_workflow(world.org_a, [("http", {"url": "http://127.0.0.1/x", "secret_headers": {
            "X-Ok": {"secret": "PAYMENTS_TOKEN"}, "X-Env": {"env": "SECRET_KEY"},
            "X-Gone": {"secret": "GONE"}}})], name="Legacy")
        Provider.objects.create(org=world.org_b, name="old-ai", base_url="http://127.0.0.1/v1",
                                model="m", api_key_env="OPENAI_API_KEY")
        out = StringIO()
        with pytest.raises(SystemExit) as exc:
            call_command("secrets_check", stdout=out, stderr=StringIO())
        assert exc.value.code == 1
        lines = out.getvalue().splitlines()
        assert len(lines) == 3
        assert any("legacy" in line and "X-Env" in line and "SECRET_KEY" in line
                   for line in lines)
        assert any("X-Gone" in line and "GONE" in line for line in lines)
        assert any("provider old-ai" in line and "OPENAI_API_KEY" in line for line in lines)
        assert not any("X-Ok" in line for line in lines)

    def test_lists_every_credential_typed_in_instead_of_a_secret(self, world):
        """Saved before such values were refused: they run, and viewers read them."""
        make_workflow(world.org_a, [("http", {"url": "http://127.0.0.1/x", "headers": {
            "Authorization": f"'Bearer {TOKEN}'", "X-Ticket": "input.t"}, "secret_headers": {
            "X-Pay": {"secret": "PAYMENTS_TOKEN", "prefix": f"{TOKEN} "}}})], name="Typed")
        Provider.objects.create(org=world.org_a, name="gateway", model="m",
                                base_url=f"https://llm.example.com/v1?key={TOKEN}")
        out = StringIO()
        with pytest.raises(SystemExit) as exc:
            call_command("secrets_check", stdout=out, stderr=StringIO())
        assert exc.value.code == 1
        lines = out.getvalue().splitlines()
        assert len(lines) == 2
        assert "workflow typed" in lines[0] and "headers.Authorization: a credential" in lines[0]
        assert "provider gateway: the base URL has a ?query" in lines[1]
        assert TOKEN not in out.getvalue()

    def test_granted_but_unset_variable_is_listed(self, world, monkeypatch):
        monkeypatch.delenv("GRANTED_TOKEN")
        make_workflow(world.org_a, [("http", {"url": "http://127.0.0.1/x", "secret_headers": {
            "X-Env": {"env": "GRANTED_TOKEN"}}})])
        out = StringIO()
        with pytest.raises(SystemExit):
            call_command("secrets_check", stdout=out, stderr=StringIO())
        assert "not set" in out.getvalue()

    def test_all_good_exits_0(self, world):
        make_workflow(world.org_a, [("http", {"url": "http://127.0.0.1/x", "secret_headers": {
            "X-Ok": {"secret": "PAYMENTS_TOKEN"}}})])
        out = StringIO()
        call_command("secrets_check", stdout=out)
        assert "Every secret reference resolves" in out.getvalue()


def test_demo_seeds_the_agent_key_as_a_host_bound_org_secret(db, monkeypatch, tmp_path):
    from intakes.demo.seed import demo_seed

    monkeypatch.setattr("intakes.demo.seed.SECRETS_FILE", tmp_path / "secrets.json")
    monkeypatch.setenv("AUXOT_DEMO_AGENT_BASE_URL", "http://127.0.0.1:9999/v1")
    monkeypatch.setenv("AUXOT_DEMO_AGENT_MODEL", "tiny")
    monkeypatch.setenv("AUXOT_DEMO_AGENT_KEY_ENV", "DEMO_AI_KEY")
    monkeypatch.setenv("DEMO_AI_KEY", "sk-demo-1")
    demo_seed()
    provider = Provider.objects.get(name="demo-ai")
    assert (provider.api_key_secret, provider.api_key_env) == ("demo-ai-key", "")
    assert Secret.objects.get(org=provider.org).allowed_hosts == ["127.0.0.1"]
    monkeypatch.setenv("DEMO_AI_KEY", "sk-demo-2")
    demo_seed()
    secret = Secret.objects.get(org=provider.org)
    assert secret.rotated_at is not None
    from auxot import crypto

    assert crypto.decrypt(secret.value_encrypted, purpose="org-secret") == "sk-demo-2"
