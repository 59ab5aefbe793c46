"""Refuse to start with a django-q2 configuration that would lose or duplicate work."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def q_cluster_is_safe(app_configs, **kwargs) -> list[Error]:
    conf = settings.Q_CLUSTER
    errors = []
    timeout, retry = conf.get("timeout"), conf.get("retry")
    if timeout is None or retry is None or timeout >= retry:
        errors.append(Error(
            "Q_CLUSTER['timeout'] must be set and below Q_CLUSTER['retry'], or a running task "
            "is handed to a second worker.", id="workflows.E001"))
    if conf.get("max_attempts", 0) < 1:
        errors.append(Error(
            "Q_CLUSTER['max_attempts'] must be at least 1: 0 retries a failing task forever.",
            id="workflows.E002"))
    if not conf.get("ack_failures"):
        errors.append(Error(
            "Q_CLUSTER['ack_failures'] must be True so failed tasks leave the queue; the "
            "engine's sweeper owns retries.", id="workflows.E003"))
    step_timeout = settings.AUXOT_STEP_TIMEOUT_SECONDS + settings.AUXOT_LEASE_GRACE_SECONDS
    if timeout is not None and timeout <= step_timeout:
        errors.append(Error(
            f"AUXOT_TASK_TIMEOUT_SECONDS ({timeout}, django-q2's task timeout) must exceed "
            f"AUXOT_STEP_TIMEOUT_SECONDS + AUXOT_LEASE_GRACE_SECONDS ({step_timeout}), or "
            "django-q2 kills a step the engine still owns.",
            id="workflows.E004"))
    return errors
