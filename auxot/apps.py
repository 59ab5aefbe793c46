from django.apps import AppConfig


class AuxotConfig(AppConfig):
    name = "auxot"
    verbose_name = "Organizations and audit"

    def ready(self) -> None:
        from auxot import (
            checks,  # noqa: F401 - registers the checks
            pgtime,
        )

        pgtime.connect()  # PostgreSQL: timestamps parsed in C (see auxot/pgtime.py)
