"""At most AUXOT_WEB_ACTIVE_REQUESTS requests of one web process work at once.

gunicorn's gthread workers need more threads than CPUs so that long-polls (`?wait=N`) can
wait in them, but every thread that works at once contends for the GIL and the database
pool, and past a few of them a process serves fewer requests, not more. So the threads
are decoupled from the work: each request takes one of a small number of slots for as long
as it works, and a long-poll gives its slot back while it sleeps (`slot_released`). A
waiting long-poll therefore holds a thread but never a trigger's slot; requests beyond the
slots wait for one in their thread (or in gunicorn's accept queue), in arrival order of
the operating system's choosing. 0 switches the limit off.

The body is read before a slot is taken (auxot/bodydeadline.py wraps the whole WSGI app,
under its own deadline), so a slow sender holds a thread for a while, never a slot.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

_local = threading.local()
_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def _semaphore(limit: int) -> threading.BoundedSemaphore:
    global _slots
    with _lock:
        if _slots is None or _slots[0] != limit:  # the setting changed (tests)
            _slots = (limit, threading.BoundedSemaphore(limit))
        return _slots[1]


@contextmanager
def slot_held() -> Iterator[None]:
    """Work inside one of the process's slots (re-entrant within a thread)."""
    limit = settings.AUXOT_WEB_ACTIVE_REQUESTS
    if limit <= 0 or getattr(_local, "slot", None) is not None:
        yield
        return
    slot = _semaphore(limit)
    slot.acquire()
    _local.slot = slot
    try:
        yield
    finally:
        _local.slot = None
        slot.release()


@contextmanager
def slot_released() -> Iterator[None]:
    """For a request that sleeps (a long-poll): its slot serves others meanwhile."""
    slot = getattr(_local, "slot", None)
    if slot is None:
        yield
        return
    _local.slot = None
    slot.release()
    try:
        yield
    finally:
        slot.acquire()
        _local.slot = slot


# A liveness probe asks whether the process is up, not whether it is busy: it never waits
# for a slot, so a saturated process is not restarted by its supervisor for being busy.
UNSLOTTED_PATHS = frozenset({"/healthz"})


class ActiveRequestsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path in UNSLOTTED_PATHS:
            return self.get_response(request)
        with slot_held():
            return self.get_response(request)
