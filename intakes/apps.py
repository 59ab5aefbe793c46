from django.apps import AppConfig


class IntakesConfig(AppConfig):
    name = "intakes"
    verbose_name = "Intakes"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from intakes import receivers  # noqa: F401  (connects to workflows' signals)

        post_migrate.connect(_schedule_retention, sender=self,
                             dispatch_uid="intakes.retention_schedule")


def _schedule_retention(sender, using="default", **kwargs) -> None:
    from intakes.retention import retention_schedule_ensure

    retention_schedule_ensure()
