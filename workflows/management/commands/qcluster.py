"""`manage.py qcluster`: django-q2's cluster plus Auxot's ticker (see workflows/ticker.py)."""

import os

from django.conf import settings
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as QClusterCommand

from workflows.ticker import Ticker


class Command(QClusterCommand):
    help = "Starts a django-q2 cluster and Auxot's ticker (wakes due work, heartbeats)."

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
            while cluster.sentinel is not None and cluster.sentinel.is_alive():
                cluster.sentinel.join(0.5)
        finally:
            ticker.stop()
            ticker.join(5)
