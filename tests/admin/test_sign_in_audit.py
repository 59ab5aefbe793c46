"""Sign-ins on the audit trail: the admin's sign-in, sign-out and failed sign-ins.

A user's sign-in is one row in each organization they are a member of (its admins and
auditors see it, no other organization does), or one row without an organization (superusers
only) for a user in none. A failed sign-in for a username no account has is a row without an
organization, so no tenant learns which names were tried. No row ever holds a password.
"""

import csv
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from auxot.models import AuditEvent, AuditLogEntry, Membership

pytestmark = pytest.mark.django_db

LOGIN, LOGOUT = "/admin/login/", "/admin/logout/"
LOG, EXPORT = "/admin/auxot/auditevent/", "/admin/auxot/auditevent/export.csv"
PASSWORD = "Correct-Horse-Battery-42"
WRONG = "Wrong-Staple-Password-99"
UNKNOWN = "nobody-by-this-name"
SIGN_INS = ("user.logged_in", "user.logged_out", "user.login_failed")


def _password(user, password: str = PASSWORD):
    user.set_password(password)
    user.save(update_fields=["password"])
    return user


def _sign_in(username: str, password: str = PASSWORD, **meta):
    client = Client(REMOTE_ADDR=meta.pop("REMOTE_ADDR", "10.9.8.7"), **meta)
    response = client.post(LOGIN, {"username": username, "password": password,
                                   "next": "/admin/"})
    return client, response


def _rows(event: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event=event).order_by("org_id"))


def _auditor_b(cast):
    user = get_user_model().objects.create_user("auditor_b", password="pw", is_staff=True)
    Membership.objects.create(user=user, org=cast.org_b, role="auditor")
    return user


def _log_as(user) -> tuple[str, str]:
    """The audit log's list page (every sign-in row in reach, by actor search) and CSV
    export, as `user` sees them."""
    client = Client()
    client.force_login(user)
    page = client.get(LOG, {"q": "user."}).content.decode()
    response = client.get(EXPORT)
    assert response.status_code == 200
    return page, b"".join(response.streaming_content).decode("utf-8-sig")


def test_a_sign_in_is_audited_in_the_users_organization_from_the_callers_address(cast):
    _password(cast.admin_a)
    client, response = _sign_in("admin_a")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200  # the sign-in itself still works
    [row] = _rows("user.logged_in")
    assert (row.org_id, row.actor_user_id, row.actor_label, row.ip) == (
        cast.org_a.pk, cast.admin_a.pk, "admin_a", "10.9.8.7")
    assert (row.object_type, row.object_id) == ("auth.user", str(cast.admin_a.pk))


def test_the_address_is_the_client_ip_behind_a_trusted_proxy(cast, settings):
    settings.AUXOT_TRUSTED_PROXIES = ["10.0.0.0/8"]
    _password(cast.admin_a)
    _sign_in("admin_a", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.7")
    _sign_in("admin_a", WRONG, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.8")
    assert [row.ip for row in _rows("user.logged_in")] == ["203.0.113.7"]
    assert [row.ip for row in _rows("user.login_failed")] == ["203.0.113.8"]


def test_a_sign_out_is_audited(cast):
    _password(cast.member_a)
    client, _ = _sign_in("member_a")
    assert client.post(LOGOUT).status_code == 200
    [row] = _rows("user.logged_out")
    assert (row.org_id, row.actor_user_id, row.ip) == (cast.org_a.pk, cast.member_a.pk,
                                                       "10.9.8.7")
    assert client.get("/admin/").status_code == 302  # signed out indeed


def test_a_sign_out_of_nobody_writes_nothing(cast):
    Client().post(LOGOUT)
    assert not AuditEvent.objects.filter(event__in=SIGN_INS).exists()


def test_a_member_of_two_organizations_signs_in_on_both_logs(cast):
    Membership.objects.create(user=cast.member_a, org=cast.org_b, role="auditor")
    _password(cast.member_a)
    _sign_in("member_a")
    _sign_in("member_a", WRONG)
    assert [row.org_id for row in _rows("user.logged_in")] == [cast.org_a.pk, cast.org_b.pk]
    assert [row.org_id for row in _rows("user.login_failed")] == [cast.org_a.pk,
                                                                   cast.org_b.pk]


def test_a_user_of_no_organization_signs_in_where_superusers_alone_see_it(cast):
    root = get_user_model().objects.create_superuser("root", "r@example.com", PASSWORD)
    _sign_in("root")
    [row] = _rows("user.logged_in")
    assert (row.org_id, row.actor_user_id) == (None, root.pk)


def test_a_failed_sign_in_of_a_member_is_on_their_organizations_log(cast):
    _password(cast.member_a)
    client, response = _sign_in("member_a", WRONG)
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    [row] = _rows("user.login_failed")
    assert (row.org_id, row.actor_user_id, row.actor_label, row.ip) == (
        cast.org_a.pk, None, "sign-in form", "10.9.8.7")
    assert (row.object_id, row.extra) == (str(cast.member_a.pk), {"user": "member_a"})


def test_a_failed_sign_in_of_an_unknown_name_is_for_superusers_only(cast):
    _, response = _sign_in(UNKNOWN, WRONG)
    assert response.status_code == 200
    [row] = _rows("user.login_failed")
    assert (row.org_id, row.object_id, row.extra) == (None, "", {"username": UNKNOWN,
                                                               "known": False})
    for user in (cast.admin_a, cast.auditor_a, cast.outsider_b):
        page, export = _log_as(user)
        assert UNKNOWN not in page and UNKNOWN not in export
        assert "user.login_failed" not in export
    root = get_user_model().objects.create_superuser("root", "r@example.com", "pw")
    page, export = _log_as(root)
    assert UNKNOWN in export


def test_an_auditor_of_another_organization_sees_no_sign_in_of_this_ones_users(cast):
    """Org B's auditor (and admin) see none of org A's users' sign-ins, sign-outs or failed
    attempts; org A's auditor sees them all."""
    for user in (cast.admin_a, cast.member_a):
        _password(user)
    client, _ = _sign_in("admin_a")
    client.post(LOGOUT)
    _sign_in("member_a", WRONG)
    before = AuditEvent.objects.filter(event__in=SIGN_INS).count()
    assert before == 3
    auditor_b = _auditor_b(cast)
    for outsider in (auditor_b, cast.outsider_b):
        page, export = _log_as(outsider)
        rows = list(csv.DictReader(io.StringIO(export)))
        # Only org B's own users' sign-ins (here by force_login) are in reach; none of A's.
        assert {row["actor_label"] for row in rows if row["event"] in SIGN_INS} <= {
            auditor_b.username, cast.outsider_b.username}, rows
        assert "admin_a" not in export and "member_a" not in export
        assert "admin_a" not in page and "member_a" not in page
    page, export = _log_as(cast.auditor_a)
    assert "admin_a" in page and "user.login_failed" in page
    rows = list(csv.DictReader(io.StringIO(export)))
    seen = {(row["event"], row["actor_label"]) for row in rows}
    assert {("user.logged_in", "admin_a"), ("user.logged_out", "admin_a"),
            ("user.login_failed", "sign-in form")} <= seen


def test_no_password_reaches_any_audit_row(cast):
    """Right and wrong passwords, for a member, an unknown name and a superuser: no row,
    its extra, the log's view or its CSV export holds one."""
    _password(cast.admin_a)
    root = get_user_model().objects.create_superuser("root", "r@example.com", PASSWORD)
    client, _ = _sign_in("admin_a")
    client.post(LOGOUT)
    _sign_in("admin_a", WRONG)
    _sign_in(UNKNOWN, WRONG)
    _sign_in("root")
    assert AuditEvent.objects.filter(event__in=SIGN_INS).count() == 5
    stored = json.dumps([[str(value) for value in row] for row in
                         AuditLogEntry.objects.values_list()])
    _, export = _log_as(root)
    for password in (PASSWORD, WRONG):
        assert password not in stored and password not in export
        assert "*****" not in stored  # not even Django's placeholder for it


def test_a_flood_of_wrong_passwords_writes_a_few_rows_a_minute_and_counts_the_rest(
        cast, settings, monkeypatch):
    """Anyone can fail a sign-in: unbudgeted, a password-guessing loop wrote a row a guess
    into the append-only log for good. Budgeted like an intake's rejections: per source
    (an IPv6 address's /64) and in all, the rest counted into the source's next row."""
    from auxot.services import sign_in_failure_budget

    now = [600.0]
    monkeypatch.setattr(sign_in_failure_budget, "clock", lambda: now[0])
    settings.AUXOT_REJECTION_AUDIT_PER_SOURCE, settings.AUXOT_REJECTION_AUDIT_PER_MINUTE = 2, 6
    _password(cast.member_a)
    for n in range(6):
        _sign_in("member_a" if n % 2 else UNKNOWN, WRONG)
    assert len(_rows("user.login_failed")) == 2  # the source's two rows this minute
    # Another host still gets rows; a neighbour in the same IPv6 /64 does not.
    _sign_in(UNKNOWN, WRONG, REMOTE_ADDR="10.1.1.1")
    _sign_in(UNKNOWN, WRONG, REMOTE_ADDR="2001:db8::1")
    _sign_in(UNKNOWN, WRONG, REMOTE_ADDR="2001:db8::1")
    _sign_in(UNKNOWN, WRONG, REMOTE_ADDR="2001:db8::2")
    assert len(_rows("user.login_failed")) == 5
    # Correct passwords are never budgeted away.
    client, _ = _sign_in("member_a")
    assert "_auth_user_id" in client.session and len(_rows("user.logged_in")) == 1
    now[0] += 60  # the next minute: the flooding source's next row carries its count
    _sign_in(UNKNOWN, WRONG)
    latest = AuditEvent.objects.filter(event="user.login_failed", ip="10.9.8.7").order_by(
        "-created_at", "-pk").first()
    assert latest.extra["suppressed"] == 4


def _in_order(event: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event=event).order_by("created_at"))


def _member(cast, username: str, *, is_staff: bool, is_active: bool = True):
    user = get_user_model().objects.create_user(username, password=PASSWORD,
                                                is_staff=is_staff, is_active=is_active)
    Membership.objects.create(user=user, org=cast.org_a, role="member")
    return user


def test_a_correct_password_the_admin_refuses_is_audited_with_its_reason(cast):
    """An account that is not staff gets past authentication and is then refused by the
    admin's form: Django sends no `user_login_failed` for it, so without the form's own
    record a correct password for such an account left no trace. It is a failed sign-in,
    with `reason` saying the password was right; a wrong one has no reason."""
    user = _member(cast, "api_only", is_staff=False)
    client, response = _sign_in("api_only")
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    assert "staff account" in response.content.decode()  # Django's own refusal, unchanged
    [row] = _rows("user.login_failed")
    assert (row.org_id, row.object_id, row.actor_label, row.ip) == (
        cast.org_a.pk, str(user.pk), "sign-in form", "10.9.8.7")
    assert row.extra == {"user": "api_only", "reason": "not_staff"}
    _sign_in("api_only", WRONG)
    assert [row.extra for row in _in_order("user.login_failed")] == [
        {"user": "api_only", "reason": "not_staff"}, {"user": "api_only"}]
    assert not _rows("user.logged_in")


def test_an_inactive_account_let_through_by_its_backend_is_refused_and_audited(
        cast, settings):
    """Under a backend that authenticates inactive users, the form refuses them: audited
    as `inactive`. (Django's default backend refuses them itself and sends the signal: an
    ordinary failed sign-in.)"""
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.AllowAllUsersModelBackend"]
    _member(cast, "gone_staff", is_staff=True, is_active=False)
    client, response = _sign_in("gone_staff")
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    [row] = _rows("user.login_failed")
    assert row.extra == {"user": "gone_staff", "reason": "inactive"}
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
    _sign_in("gone_staff")
    assert [row.extra for row in _in_order("user.login_failed")] == [
        {"user": "gone_staff", "reason": "inactive"}, {"user": "gone_staff"}]
