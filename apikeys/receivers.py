"""Model signal receivers. Each calls one service."""

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from apikeys.models import ApiKey
from apikeys.services import apikey_deletion_record


@receiver(pre_delete, sender=ApiKey, dispatch_uid="apikeys.audit_deletion")
def audit_key_deletion(sender, instance: ApiKey, origin=None, **kwargs) -> None:
    apikey_deletion_record(key=instance, origin=origin)
