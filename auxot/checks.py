"""System checks for settings whose problems are not errors (`manage.py check` shows them)."""

from django.conf import settings
from django.core.checks import Warning, register


@register()
def deprecated_settings(app_configs, **kwargs) -> list[Warning]:
    if getattr(settings, "AUXOT_CALLBACK_ALLOWED_NETWORKS", None):
        return [Warning(
            "AUXOT_CALLBACK_ALLOWED_NETWORKS is deprecated; it is merged into "
            "AUXOT_OUTBOUND_ALLOWED_NETWORKS, which covers callbacks, http steps and agent "
            "providers alike.",
            hint="Rename the variable to AUXOT_OUTBOUND_ALLOWED_NETWORKS.",
            id="auxot.W001")]
    return []
