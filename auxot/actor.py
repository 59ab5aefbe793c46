"""Who acts in this request, for audit rows that no service call can name an actor for.

Deleting a team deletes its keys, deleting a user their personal keys: Django's cascade, run
by the admin's delete page, not by one of our services given `actor=`. The receivers that
audit those rows ask `acting()`. Bound for the admin's pages only (the API's actor is its
key, which its services are given); outside a request (a shell, a migration) nobody is.
"""

from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

from auxot.http import client_ip

_request: ContextVar[HttpRequest | None] = ContextVar("auxot_acting_request", default=None)


class ActingUserMiddleware:
    """After AuthenticationMiddleware. `request.user` stays lazy until `acting()` asks."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/admin/"):
            return self.get_response(request)
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def acting() -> tuple[object | None, str | None]:
    """(the signed-in user, their address) of the admin request this runs in, or (None, None)."""
    request = _request.get()
    if request is None:
        return None, None
    user = getattr(request, "user", None)
    return (user if user is not None and user.is_authenticated else None), client_ip(request)
