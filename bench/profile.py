"""Where a trigger's and a poll's time goes: `python bench/profile.py [trigger|poll|insert|get]`.

Runs N requests in process through Django's full request stack (middleware, DRF, ORM) on
the bench database (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/auxot_bench),
under pyinstrument, and prints the call tree. No HTTP server: this is the Python cost per
request that gunicorn's workers pay.

`insert` and `get` profile the two ceiling views (one INSERT + COMMIT; one GET by primary
key). They are mounted only with AUXOT_BENCH_CEILINGS=1, which this script sets for its own
process (never set it in production).

It cleans up after itself, also when interrupted (Ctrl-C, SIGTERM): the work items its
triggers were accepted for (with their attempts) and the ceiling's queue rows are deleted,
so a later `make bench` finds no pending work of this run. What remains is the throw-away
organization with its intake and key (the audit trail is append-only).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def profile_cleanup(fixture: common.Fixture) -> int:
    """Delete what a profile run created that would otherwise be run or counted later:
    the intake's work items and the ceiling view's queue rows. Returns items deleted."""
    from django_q.models import OrmQ

    from intakes.bench_views import CEILING_QUEUE
    from workflows.models import WorkItem

    deleted = WorkItem.objects.filter(intake_id=fixture.intake_id).delete()[1].get(
        WorkItem._meta.label, 0)
    OrmQ.objects.filter(key=CEILING_QUEUE).delete()
    return deleted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["trigger", "poll", "insert", "get"])
    parser.add_argument("-n", type=int, default=2000, help="requests profiled")
    args = parser.parse_args()
    os.environ["AUXOT_BENCH_CEILINGS"] = "1"
    common.django_setup()
    from django.test import Client
    from pyinstrument import Profiler

    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: ignored in background jobs
        signal.signal(signum, _interrupt)
    print("loadavg start={:.2f} {:.2f} {:.2f}".format(*common.load()), flush=True)
    fixture = common.fixture_create("profile")
    profiler = Profiler(interval=0.0005)
    try:
        client = Client(HTTP_AUTHORIZATION=f"Bearer {fixture.token}", HTTP_HOST="127.0.0.1")
        url = f"/v1/intake/{fixture.intake_id}"
        work_id = client.post(url, data={"n": 1},
                              content_type="application/json").json()["work_id"]
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
        profiler.start()
        for _ in range(args.n):
            response = send()
        profiler.stop()
        assert response.status_code in (200, 202), response.content
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        print("loadavg end={:.2f} {:.2f} {:.2f}".format(*common.load()))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if profiler.is_running:
            profiler.stop()
        deleted = profile_cleanup(fixture)
        print(f"cleaned up: {deleted} work items", file=sys.stderr)


if __name__ == "__main__":
    main()
