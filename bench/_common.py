"""Shared set-up for the engine benchmarks: a migrated database, a fresh org, a qcluster.

Run from the repository root with DATABASE_URL pointing at a database you can throw
away (it is created when missing on PostgreSQL).
"""

import os
import statistics
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "auxot.settings")
# Must match tests.processes.process_env: the broker signs tasks with SECRET_KEY.
os.environ["SECRET_KEY"] = "test-only-secret-key"  # noqa: S105
os.environ.setdefault("LOG_LEVEL", "WARNING")


def _ensure_database() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup():
    _ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_org():
    from auxot.models import Organization

    tag = uuid.uuid4().hex[:8]
    return Organization.objects.create(name=f"bench {tag}", slug=f"bench-{tag}",
                                       plan="business")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
