"""DRF authentication: `Authorization: Bearer <key>`, nothing else."""

import re

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from apikeys.services import apikey_authenticate
from auxot.errors import UnauthorizedError

# Exactly "Bearer", one space, one token: the tutorial's contract ("Bearer + single space").
_BEARER_RE = re.compile(r"^Bearer ([^\s]+)$")
_MAX_HEADER = 512


class BearerKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is None:
            return None  # -> NotAuthenticated (401) from the permission check
        if len(header) > _MAX_HEADER:
            raise exceptions.AuthenticationFailed("The Authorization header is too long.")
        match = _BEARER_RE.match(header)
        if not match:
            raise exceptions.AuthenticationFailed(
                "Use 'Authorization: Bearer <key>': the word Bearer, one space, then the key."
            )
        try:
            key = apikey_authenticate(token=match.group(1), now=timezone.now(),
                                      load=self.key_loader(request))
        except UnauthorizedError as exc:
            raise exceptions.AuthenticationFailed(exc.detail) from None
        return (key.user, key)  # a team key acts as its team: request.auth.team

    def key_loader(self, request):
        """How to read the key (None: apikeys.lookup); a subclass may join more to it."""
        return None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="auxot"'


class HasApiKey(permissions.BasePermission):
    message = "Send 'Authorization: Bearer <key>' with a user.… or team.… API key."

    def has_permission(self, request, view) -> bool:
        return request.auth is not None
