"""The demo seeds one example workflow per step kind, idempotently."""

from intakes.demo.seed import demo_seed
from intakes.models import Intake
from workflows.models import Provider, Workflow


def test_demo_seeds_one_example_per_kind_idempotently(db, monkeypatch, tmp_path):
    monkeypatch.setattr("intakes.demo.seed.SECRETS_FILE", tmp_path / "secrets.json")
    for name in ("AUXOT_DEMO_AGENT_BASE_URL", "AUXOT_DEMO_AGENT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    demo = demo_seed()
    assert [e.kind for e in demo.examples] == ["transform", "delay", "http", "approval",
                                              "agent"]
    agent = demo.examples[-1]
    assert not agent.active
    assert not Intake.objects.get(pk=agent.intake.pk).active
    counts = (Workflow.objects.count(), Intake.objects.count(), Provider.objects.count())
    monkeypatch.setenv("AUXOT_DEMO_AGENT_BASE_URL", "http://127.0.0.1:9999/v1")
    monkeypatch.setenv("AUXOT_DEMO_AGENT_MODEL", "tiny")
    again = demo_seed()
    assert (Workflow.objects.count(), Intake.objects.count(), Provider.objects.count()) == counts
    assert again.examples[-1].active
    assert Intake.objects.get(pk=agent.intake.pk).active
    assert Provider.objects.get(name="demo-ai").model == "tiny"
    for example in again.examples:
        for step in example.intake.workflow.steps.all():
            step.full_clean()  # every example's config passes its kind's validation
