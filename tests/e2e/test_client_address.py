"""The caller's address through a real gunicorn, as the README deploys it behind nginx:
gunicorn passes X-Forwarded-For on untouched (it believes only X-Forwarded-Proto) and the
app takes the caller's address from it only when the peer is a trusted proxy."""

import pytest
import requests

from tests.processes import Gunicorn
from workflows.models import WorkItem

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "198.51.100.7"),  # the default: a proxy on this host is trusted
    ({"AUXOT_TRUSTED_PROXIES": ""}, "127.0.0.1"),  # no proxy trusted: always the peer
    ({"GUNICORN_FORWARDED_ALLOW_IPS": "10.0.0.1"}, "127.0.0.1"),  # the peer is not it
])
def test_gunicorn_behind_a_proxy_records_the_callers_address(intake_a, member_token, env,
                                                             expected):
    web = Gunicorn(workers=1, **env).start()
    try:
        # What nginx sends for a caller at 198.51.100.7 that forged its own header.
        response = requests.post(
            f"{web.url}/v1/intake/{intake_a.pk}", json={"n": 1}, timeout=30,
            headers={"Authorization": f"Bearer {member_token}",
                     "X-Forwarded-For": "10.9.9.9, 198.51.100.7"})
    finally:
        web.stop()
    assert response.status_code == 202, response.text
    assert WorkItem.objects.get(pk=response.json()["work_id"]).created_by_ip == expected
