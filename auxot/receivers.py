"""Signal receivers. Each calls one service."""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from auxot.http import client_ip
from auxot.models import Membership
from auxot.services import (
    SIGNED_IN,
    SIGNED_OUT,
    membership_deletion_record,
    sign_in_failure_record,
    sign_in_record,
)


@receiver(pre_delete, sender=Membership, dispatch_uid="auxot.audit_membership_deletion")
def audit_membership_deletion(sender, instance: Membership, origin=None, **kwargs) -> None:
    membership_deletion_record(membership=instance, origin=origin)


def _ip(request) -> str | None:
    return client_ip(request) if request is not None else None


@receiver(user_logged_in, dispatch_uid="auxot.audit_sign_in")
def audit_sign_in(sender, request=None, user=None, **kwargs) -> None:
    if user is not None:
        sign_in_record(event=SIGNED_IN, user=user, ip=_ip(request))


@receiver(user_logged_out, dispatch_uid="auxot.audit_sign_out")
def audit_sign_out(sender, request=None, user=None, **kwargs) -> None:
    if user is not None:  # None: nobody was signed in
        sign_in_record(event=SIGNED_OUT, user=user, ip=_ip(request))


@receiver(user_login_failed, dispatch_uid="auxot.audit_sign_in_failed")
def audit_sign_in_failed(sender, credentials=None, request=None, **kwargs) -> None:
    # Django has replaced the password in `credentials` already; only the username is read.
    credentials = credentials or {}
    username = credentials.get("username", credentials.get(get_user_model().USERNAME_FIELD))
    sign_in_failure_record(username=username, ip=_ip(request))
