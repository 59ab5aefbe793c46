"""var/demo-secrets.json holds each database's demo key and every demo intake's signing
secret: `make run` on SQLite, then against PostgreSQL, then on SQLite again used to issue a
new key and rotate the intake's secret at each switch (one flat token and one secret on
file, each overwritten by the other database's)."""

import json

import pytest

from apikeys.models import ApiKey
from intakes.demo import seed
from intakes.models import Intake

pytestmark = pytest.mark.django_db


def _as_another_database(monkeypatch, label: str) -> None:
    monkeypatch.setattr(seed, "_database_label", lambda: label)


def _hide(first) -> None:
    """Make this database look like one where the first demo was never seeded."""
    ApiKey.objects.filter(label="Demo key").update(label="Demo key (elsewhere)")
    Intake.objects.filter(pk=first.intake.pk).update(name="Demo intake (elsewhere)")


def _unhide(second) -> None:
    """And back: only the first database's rows are here again."""
    ApiKey.objects.filter(label="Demo key").delete()
    ApiKey.objects.filter(label="Demo key (elsewhere)").update(label="Demo key")
    Intake.objects.filter(pk=second.intake.pk).delete()
    Intake.objects.filter(name="Demo intake (elsewhere)").update(name="Demo intake")


def test_switching_databases_and_back_keeps_each_ones_key_and_secret(tmp_path, monkeypatch):
    monkeypatch.setattr(seed, "SECRETS_FILE", tmp_path / "demo-secrets.json")
    _as_another_database(monkeypatch, "sqlite:///var/db.sqlite3")
    first = seed.demo_seed()
    _hide(first)
    _as_another_database(monkeypatch, "postgresql://127.0.0.1:5432/auxot")
    second = seed.demo_seed()
    assert second.token != first.token and second.intake.pk != first.intake.pk
    _unhide(second)
    _as_another_database(monkeypatch, "sqlite:///var/db.sqlite3")
    back = seed.demo_seed()
    assert back.token == first.token  # not a third key
    assert ApiKey.objects.filter(label="Demo key").count() == 1
    assert back.signing_secret == first.signing_secret and not back.signing_secret_is_new
    stored = json.loads((tmp_path / "demo-secrets.json").read_text())
    assert stored["signing_secrets"] == {str(first.intake.pk): first.signing_secret,
                                         str(second.intake.pk): second.signing_secret}
    assert stored["token"] == first.token  # the one printed last


def test_a_file_from_before_keeps_its_key(tmp_path, monkeypatch):
    """One flat "token", as the file was before: still this database's key if it matches."""
    monkeypatch.setattr(seed, "SECRETS_FILE", tmp_path / "demo-secrets.json")
    first = seed.demo_seed()
    (tmp_path / "demo-secrets.json").write_text(json.dumps({
        "password": first.password, "token": first.token,
        "signing_secrets": {str(first.intake.pk): first.signing_secret}}))
    again = seed.demo_seed()
    assert (again.token, again.password) == (first.token, first.password)
    assert not again.signing_secret_is_new


def test_the_label_names_the_database_but_not_its_password():
    from django.db import connection

    label = seed._database_label()
    assert str(connection.settings_dict["NAME"]) in label
    password = connection.settings_dict.get("PASSWORD")
    assert not password or password not in label
