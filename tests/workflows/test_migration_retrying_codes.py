"""Migration 0014: attempt rows stored with the code 'retrying' (before attempts kept their
own code) get the code the current version stores for them."""

import importlib

from django.apps import apps
from django.db import transaction
from django.utils import timezone

from tests.conftest import make_workflow
from workflows.kinds import REGISTRY, kind_get
from workflows.kinds.base import retried_error
from workflows.models import StepRun
from workflows.services import work_item_create

migration = importlib.import_module("workflows.migrations.0014_steprun_retrying_codes")


def _row(workflow, *, status="failed", error=None, state=None):
    with transaction.atomic():
        item = work_item_create(workflow=workflow, input={})
    step = workflow.steps.get()
    return StepRun.objects.create(work_item=item, step=step, attempt=1, status=status,
                                  started_at=timezone.now(), error=error, state=state or {})


def test_the_frozen_codes_are_the_kinds_own():
    """What the migration writes is what the engine writes today (retried_error)."""
    for name, kind in REGISTRY.items():
        assert migration.code_for(name, {}) == retried_error({}, kind.retry_codes)["code"]
    assert migration.code_for("gone-kind", {}) == "step_error"


def test_retrying_rows_get_their_kinds_code_and_keep_their_reason(cast):
    config = {"http": {"method": "POST", "url": "https://example.com/hook"},
              "agent": {"provider": "p", "prompt": "hi"},
              "transform": {"expression": "input"}}
    rows = {name: _row(make_workflow(cast.org_a, [(name, cfg)], name=f"W {name}"),
                       error={"code": "retrying", "message": f"{name} said 503"})
            for name, cfg in config.items()}
    kept = _row(make_workflow(cast.org_a, [("http", config["http"])], name="Kept"),
                error={"code": "retrying", "message": "m"},
                state={"retry": True, "code": "http_unavailable", "reason": "m"})
    other = _row(make_workflow(cast.org_a, [("http", config["http"])], name="Other"),
                 error={"code": "http_retries_exhausted", "message": "done"})
    running = _row(make_workflow(cast.org_a, [("http", config["http"])], name="Running"),
                   status="running")
    untouched = {r.pk: StepRun.objects.get(pk=r.pk).error for r in (other, running)}

    migration.retrying_codes_migrate(apps, None)

    for name, row in rows.items():
        row.refresh_from_db()
        codes = kind_get(name).retry_codes
        assert row.error == {"code": codes.attempt if codes else "step_error",
                             "message": f"{name} said 503"}
    kept.refresh_from_db()
    assert kept.error["code"] == "http_unavailable"
    assert not StepRun.objects.filter(error__code="retrying").exists()
    assert {pk: StepRun.objects.get(pk=pk).error for pk in untouched} == untouched
    migration.retrying_codes_migrate(apps, None)  # a second run changes nothing
    assert StepRun.objects.get(pk=rows["http"].pk).error["code"] == "http_unavailable"
