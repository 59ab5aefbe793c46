"""Where a trigger's and a poll's time goes: `python bench/profile.py [trigger|poll]`.

Runs N requests in process through Django's full request stack (middleware, DRF, ORM) on
the bench database, under pyinstrument, and prints the call tree. No HTTP server: this is
the Python cost per request that gunicorn's workers pay.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["trigger", "poll", "insert", "get"])
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    common.django_setup()
    from django.test import Client
    from pyinstrument import Profiler

    fixture = common.fixture_create("profile")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {fixture.token}", HTTP_HOST="127.0.0.1")
    url = f"/v1/intake/{fixture.intake_id}"
    work_id = client.post(url, data={"n": 1}, content_type="application/json").json()["work_id"]
    requests = {
        "trigger": lambda: client.post(url, data={"n": 1}, content_type="application/json"),
        "poll": lambda: client.get(f"{url}/work/{work_id}"),
        "insert": lambda: client.post("/bench/insert", data={"n": 1},
                                      content_type="application/json"),
        "get": lambda: client.get(f"/bench/row/{fixture.intake_id}"),
    }
    send = requests[args.what]
    for _ in range(50):
        send()
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(args.n):
        response = send()
    profiler.stop()
    assert response.status_code in (200, 202), response.content
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
