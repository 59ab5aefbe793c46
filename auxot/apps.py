from django.apps import AppConfig


class AuxotConfig(AppConfig):
    name = "auxot"
    verbose_name = "Organizations and audit"

    def ready(self) -> None:
        from auxot import receivers  # noqa: F401 - connects the audit prune to the tick
