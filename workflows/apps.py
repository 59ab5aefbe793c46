from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows and work"

    def ready(self) -> None:
        from workflows import checks  # noqa: F401  (registers the Q_CLUSTER safety check)
