from django.apps import AppConfig


class IntakesConfig(AppConfig):
    name = "intakes"
    verbose_name = "Intakes"

    def ready(self) -> None:
        from intakes import receivers  # noqa: F401  (connects to workflows' signals)
        from intakes.admin import engine_admin_extend

        engine_admin_extend()
