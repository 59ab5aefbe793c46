from django.apps import AppConfig
from django.db.models.signals import post_migrate


class IntakesConfig(AppConfig):
    name = "intakes"
    verbose_name = "Intakes"

    def ready(self) -> None:
        from auxot.models import audit_log_derives
        from intakes import receivers  # noqa: F401  (connects to workflows' signals)
        from intakes.admin import engine_admin_extend
        from intakes.housekeeping import housekeeping_schedules_ensure

        # Each accepted trigger is a row of the audit log view (migration 0006).
        audit_log_derives(event="work_item.accepted", object_type="workflows.workitem")

        engine_admin_extend()
        post_migrate.connect(housekeeping_schedules_ensure, sender=self,
                             dispatch_uid="intakes.housekeeping_schedules")
        post_migrate.connect(_schedule_retention, sender=self,
                             dispatch_uid="intakes.retention_schedule")


def _schedule_retention(sender, using="default", **kwargs) -> None:
    from intakes.retention import retention_schedule_ensure

    retention_schedule_ensure()
