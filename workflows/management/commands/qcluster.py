"""`manage.py qcluster`: django-q2's cluster plus Auxot's ticker (see workflows/ticker.py),
with a shutdown bounded by AUXOT_WORKER_GRACE_SECONDS (see workflows/cluster.py)."""

import os
import sys

from django.conf import settings
from django_q.management.commands.qcluster import Command as QClusterCommand

from workflows.cluster import Cluster
from workflows.ticker import Ticker


class Command(QClusterCommand):
    help = ("Starts a django-q2 cluster and Auxot's ticker (wakes due work, heartbeats). "
            "SIGTERM or SIGINT stops it within AUXOT_WORKER_GRACE_SECONDS.")

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
        try:
            status = cluster.serve(grace=settings.AUXOT_WORKER_GRACE_SECONDS, on_stop=ticker.stop)
        finally:
            ticker.stop()
            ticker.join(5)
        if status:
            sys.exit(status)
