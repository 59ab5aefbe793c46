"""`manage.py callbacks`: the callback dispatcher alone (see intakes/dispatcher.py).

Every `qcluster` already runs one in its main process; run this on hosts that only send
callbacks (and set AUXOT_CALLBACK_THREADS=0 on the workers if those should send none).
SIGTERM or SIGINT: no new attempt starts, in-flight ones get AUXOT_CALLBACK_GRACE_SECONDS to
finish, the rest are released (they go out again with the same webhook-id); exit status 0
when everything finished, 1 when something had to be released.
"""

import argparse
import logging
import signal
import sys
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from intakes.dispatcher import Dispatcher

logger = logging.getLogger(__name__)


def _threads(raw: str) -> int:
    """-1 started a dispatcher with no sender at all (it never sent); 0 silently meant 64."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of threads from 1 to 1024")
    return value


class Command(BaseCommand):
    help = ("Sends callback deliveries (a thread pool). SIGTERM/SIGINT stops it within "
            "AUXOT_CALLBACK_GRACE_SECONDS.")

    def add_arguments(self, parser):
        parser.add_argument("--threads", type=_threads, default=None,
                            help="concurrent attempts, 1 to 1024 (default "
                                 "AUXOT_CALLBACK_THREADS, or 64 where that is 0 to keep "
                                 "qcluster's dispatcher off)")

    def handle(self, *args, threads=None, **options):
        stop = threading.Event()

        def request_stop(signum, frame):  # record only: never block in a handler
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)
        dispatcher = Dispatcher(threads=threads or settings.AUXOT_CALLBACK_THREADS or 64)
        dispatcher.start()
        while not stop.wait(0.5):
            pass
        grace = settings.AUXOT_CALLBACK_GRACE_SECONDS
        # A log line, not a bare write: with LOG_FORMAT=json every line on stderr is JSON.
        logger.info("callbacks: stopping (in-flight attempts get %g s)", grace)
        clean = dispatcher.join(grace)
        sys.exit(0 if clean else 1)
