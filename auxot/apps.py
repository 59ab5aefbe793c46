from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AuxotConfig(AppConfig):
    name = "auxot"
    verbose_name = "Organizations and audit"

    def ready(self) -> None:
        from auxot import (
            checks,  # noqa: F401 - registers the checks
            pgtime,
            receivers,  # noqa: F401 - audits memberships however they go, and sign-ins
        )

        pgtime.connect()  # PostgreSQL: timestamps parsed in C (see auxot/pgtime.py)


class AuxotAdminConfig(admin_apps.AdminConfig):
    """Django's admin, whose every registered page then writes the audit trail
    (auxot.admin_base.audit_every_admin): the pages of Django's users and groups and of
    django-q2 are registered after ours, by their own apps."""

    default = False  # AuxotConfig stays this module's default

    def ready(self) -> None:
        super().ready()  # autodiscover: every app's admin module is registered now
        from auxot.admin_base import audit_every_admin

        audit_every_admin(self.module.site)
