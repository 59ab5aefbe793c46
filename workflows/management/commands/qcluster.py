"""`manage.py qcluster`: django-q2's cluster plus Auxot's ticker (see workflows/ticker.py)
and the services other apps start in its main process (`cluster_serving`: the callback
dispatcher), with a shutdown bounded by AUXOT_WORKER_GRACE_SECONDS (workflows/cluster.py)."""

import io
import logging
import os
import sys
import time

from django.conf import settings
from django.core.management.base import OutputWrapper
from django_q.management.commands.qcluster import Command as QClusterCommand

from workflows.cluster import Cluster
from workflows.signals import cluster_serving
from workflows.ticker import Ticker

logger = logging.getLogger(__name__)


class Command(QClusterCommand):
    help = ("Starts a django-q2 cluster and Auxot's ticker (wakes due work, heartbeats). "
            "SIGTERM or SIGINT stops it within AUXOT_WORKER_GRACE_SECONDS.")

    def check(self, *args, **kwargs):
        """The system checks at start (auxot.W001, ...): with LOG_FORMAT=json their report is
        one JSON log line, not a block of plain text in the JSON stream. An error still stops
        the command, as Django's own check does."""
        if settings.LOG_FORMAT != "json":
            return super().check(*args, **kwargs)
        stderr, self.stderr = self.stderr, OutputWrapper(io.StringIO())
        try:
            return super().check(*args, **kwargs)
        finally:
            report, self.stderr = self.stderr._out.getvalue().strip(), stderr
            if report:
                logger.warning("%s", report, extra={"event": "system_checks"})

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018  (fail before forking if it is missing)
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()
        cluster.start()  # forks the sentinel first: the ticker thread is never forked
        if options.get("run_once", False):
            cluster.stop()
            return
        ticker = Ticker()
        ticker.start()
        services = [service for _, service in cluster_serving.send(sender=Cluster)
                    if service is not None]
        grace = settings.AUXOT_WORKER_GRACE_SECONDS
        stopped_at: list[float] = []

        def on_stop() -> None:
            stopped_at.append(time.monotonic())
            ticker.stop()
            for service in services:
                service.stop()

        try:
            status = cluster.serve(grace=grace, on_stop=on_stop)
        finally:
            ticker.stop()
            # Services share the grace period that began with the stop signal.
            start = stopped_at[0] if stopped_at else time.monotonic()
            for service in services:
                if not service.join(max(0.0, start + grace - time.monotonic())):
                    logger.warning("%s did not stop within the grace period",
                                   type(service).__name__)
                    status = status or 1
            ticker.join(5)
        if status:
            sys.exit(status)
