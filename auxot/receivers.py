"""Model signal receivers. Each calls one service."""

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from auxot.models import Membership
from auxot.services import membership_deletion_record


@receiver(pre_delete, sender=Membership, dispatch_uid="auxot.audit_membership_deletion")
def audit_membership_deletion(sender, instance: Membership, origin=None, **kwargs) -> None:
    membership_deletion_record(membership=instance, origin=origin)
