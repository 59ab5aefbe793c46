from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows and work"

    def ready(self) -> None:
        from workflows import (
            checks,  # noqa: F401  (registers the Q_CLUSTER safety check)
            replay,
            signals,
        )

        signals.tick.connect(replay.on_tick, dispatch_uid="workflows.replay.on_tick")
