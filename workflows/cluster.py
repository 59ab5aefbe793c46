"""django-q2's cluster with a shutdown that always ends, within AUXOT_WORKER_GRACE_SECONDS.

django-q2 1.11 stops badly in two ways. Its main process's signal handler calls
`stop_event.set()` and an unbounded `sentinel.join()`: when SIGTERM reaches the whole group,
the sentinel dies (SIG_DFL) inside `stop_event.wait()`, leaving a sleeper count on the shared
condition, so `set()` waits forever for a wake-up nobody will acknowledge. And the sentinel's
own stop waits without bound for in-flight tasks and the monitor.

Here signal handlers only record the signal. The sentinel treats SIGTERM/SIGINT as "stop
gracefully" (its children inherit the same handler, so a signal to the whole group does not
kill a step mid-flight); the main process forwards the request to the sentinel with a signal
(never the shared event) and, past the grace period, SIGKILLs every descendant left. A killed
step is safe: its lease expires and the next cluster resumes the item.
"""

import contextlib
import logging
import os
import signal
import time
import uuid
from collections import defaultdict
from multiprocessing import Event
from pathlib import Path

from django_q import cluster as q_cluster
from django_q.conf import Conf
from django_q.scheduler import scheduler
from django_q.status import Stat

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopRequest:
    signum: int | None = None


# Module state, so a process forked before it installs its own handler keeps the request.
stop_request = _StopRequest()


def request_stop(signum, frame) -> None:
    # A signal handler may interrupt code holding any lock: record, never block or log.
    if stop_request.signum is None:
        stop_request.signum = signum


def install_stop_handlers() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)


class Sentinel(q_cluster.Sentinel):
    """Stops gracefully on SIGTERM/SIGINT, on `stop_event`, or when its parent is gone."""

    def __init__(self, stop_event, start_event, cluster_id, broker=None, timeout=None):
        # Blocked until our handler replaces the SIG_DFL that django-q2's __init__ installs.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        super().__init__(stop_event, start_event, cluster_id, broker, timeout, start=False)
        install_stop_handlers()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.start()

    def should_stop(self) -> bool:
        return (stop_request.signum is not None or self.stop_event.is_set()
                or os.getppid() != self.parent_pid)

    def guard(self) -> None:
        self.start_event.set()
        Stat(self).save()
        logger.info("Q Cluster %s running.", q_cluster.humanize(self.cluster_id.hex))
        counter, cycle = 0.0, Conf.GUARD_CYCLE
        while not self.should_stop():
            self.check_processes()
            counter += cycle
            if counter >= 30 and Conf.SCHEDULER:
                counter = 0
                scheduler(broker=self.broker)
            Stat(self).save()
            time.sleep(cycle)  # not stop_event.wait(): see the module docstring
        self.stop()

    def check_processes(self) -> None:
        for p in list(self.pool):
            with p.timer.get_lock():
                if not p.is_alive() or p.timer.value == 0:
                    self.reincarnate(p)
                elif p.timer.value > 0:
                    p.timer.value -= Conf.GUARD_CYCLE
        if not self.monitor.is_alive():
            self.reincarnate(self.monitor)
        if not self.pusher.is_alive():
            self.reincarnate(self.pusher)

    def reincarnate(self, process) -> None:
        # Workers ignore SIGTERM (see above): a timed-out one needs SIGKILL.
        if process in self.pool and process.timer.value == 0:
            process.kill()
            process.join(5)
        super().reincarnate(process)


class Cluster(q_cluster.Cluster):
    """The main process: starts the sentinel, then supervises it until a bounded stop."""

    def __init__(self) -> None:
        super().__init__()
        install_stop_handlers()  # replaces django-q2's blocking handlers

    def start(self) -> int:
        self.stop_event, self.start_event = Event(), Event()
        self.sentinel = q_cluster.get_mp_context().Process(
            target=Sentinel, name=f"Process-{uuid.uuid4().hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        logger.info("Q Cluster %s starting.", self.name)
        while (not self.start_event.is_set() and self.sentinel.is_alive()
               and stop_request.signum is None):
            time.sleep(0.1)
        return self.pid

    def serve(self, *, grace: float, on_stop) -> int:
        """Run until the sentinel ends; return the process exit status (0: clean stop)."""
        deadline = None
        while self.sentinel.is_alive():
            if deadline is None and stop_request.signum is not None:
                logger.info("qcluster got %s: stopping (grace %ss)",
                            signal.Signals(stop_request.signum).name, grace)
                deadline = time.monotonic() + grace
                on_stop()
                self._signal_sentinel(signal.SIGTERM)
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning("qcluster still running %ss after the stop signal: killing "
                               "what remains; unfinished steps resume after their lease", grace)
                self.kill_descendants()
                return 1
            self.sentinel.join(0.2)
        self.kill_descendants()  # workers orphaned by a sentinel that died
        if stop_request.signum is None:
            logger.error("qcluster sentinel exited unexpectedly (code %s)", self.sentinel.exitcode)
            return 1
        return 0

    def _signal_sentinel(self, signum: int) -> None:
        if self.sentinel.exitcode is None:  # not reaped yet: its pid cannot be reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.sentinel.pid, signum)

    def kill_descendants(self) -> None:
        for _ in range(2):  # a second pass catches a process spawned during the first
            pids = descendants(os.getpid())
            if pids is None:  # no /proc: the sentinel is all we know
                self._signal_sentinel(signal.SIGKILL)
            for pid in pids or []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.sentinel.join(5)


def descendants(pid: int) -> list[int] | None:
    """Live descendants of pid, plus the rest of its process group when pid leads it (a
    sentinel that died leaves its children to init). From /proc; None where there is none."""
    children: dict[int, list[int]] = defaultdict(list)
    group: list[int] = []
    leads_group = os.getpgid(pid) == pid
    try:
        entries = [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            state, ppid, pgid = (entry / "stat").read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z":
            children[int(ppid)].append(int(entry.name))
            if leads_group and int(pgid) == pid and int(entry.name) != pid:
                group.append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return sorted(set(found + group))
