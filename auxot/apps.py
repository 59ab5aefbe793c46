from django.apps import AppConfig


class AuxotConfig(AppConfig):
    name = "auxot"
    verbose_name = "Organizations and audit"
