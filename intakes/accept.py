"""The trigger's one write: the work item and its idempotency record in one statement.

PostgreSQL: a data-modifying CTE, with the workers' wake-up (pg_notify, delivered at commit)
folded in (at most one per web process every AUXOT_WAKE_COALESCE_SECONDS, see _wake_due);
outside a transaction that statement is also its own commit, so a trigger is one read,
the rate-limit count and this. SQLite (no data-modifying CTEs): the same rows, one INSERT
each, in one transaction. Values are prepared by the ORM's own fields
(auxot.rawsql.insert), so they are stored exactly as save() would store them.

The item's INSERT carries the caller's grant (`INSERT … SELECT … WHERE EXISTS (grant)`,
intakes/lookup.py access_grant): a key revoked or an intake deactivated after the request
was authenticated but before this statement stops it here, with nothing written.
"""

import math
import threading
import time

from django.conf import settings
from django.db import connection, transaction

from auxot import rawsql
from intakes import idempotency
from intakes.models import IdempotencyKey
from workflows.models import WorkItem
from workflows.wake import WAKE_SQL, wake_is_notify, work_wake_notify


def _folds_wake() -> bool:
    # With the Redis broker the wake-up is a push after the commit (work_wake_notify), not a
    # NOTIFY: there is nothing to fold into the statement.
    return wake_is_notify()


_wake_lock = threading.Lock()
_last_wake = -math.inf  # time.monotonic() of this process's last wake-up


def _wake_due() -> bool:
    """Whether this trigger sends the wake-up NOTIFY: at most one per web process every
    AUXOT_WAKE_COALESCE_SECONDS. PostgreSQL serializes the commits of every transaction
    that sent a NOTIFY (a database-wide lock held through the commit's flush), so one per
    trigger makes concurrent triggers commit one at a time. A trigger inside the window
    was preceded by one that woke a worker moments ago: that worker's drain claims again
    until nothing is due, and the ticker (AUXOT_TICK_SECONDS) catches anything it missed."""
    global _last_wake
    window = settings.AUXOT_WAKE_COALESCE_SECONDS
    now = time.monotonic()
    with _wake_lock:
        if window > 0 and now - _last_wake < window:
            return False
        _last_wake = now
    return True


def _wake_undo() -> None:
    """The statement that carried the wake-up failed: the next trigger sends one."""
    global _last_wake
    with _wake_lock:
        _last_wake = -math.inf


class AccessRevoked(Exception):
    """The grant the write carried no longer held when the write ran (a key revoked, an
    intake deactivated, ... since the request was authenticated): nothing was written."""


def work_item_accept_write(*, item: WorkItem, record: IdempotencyKey | None,
                           grant: tuple[str, list] | None = None) -> None:
    """Write `item` (and `record`) durably, or raise with nothing written.

    `grant`: a SELECT (with its params) that must find a row when the item is written, in
    the same statement (PostgreSQL) or transaction (SQLite): the caller's access as it is
    then, not as it was at authentication. AccessRevoked when it finds none.

    Raises IntegrityError when another request holds the record's key, and, on PostgreSQL,
    a lock timeout (OperationalError) when that request is still in flight.
    """
    where, where_params = (None, []) if grant is None else (
        f"WHERE EXISTS ({grant[0]})", list(grant[1]))
    item_sql, item_params = rawsql.insert(item, select=where)
    item_params += where_params
    if _folds_wake():
        wake = _wake_due()
        ctes = [f"w0 AS ({item_sql} RETURNING 1)"]
        params = list(item_params)
        if record is not None:  # only with the item: FROM w0, which is empty when refused
            record_sql, record_params = rawsql.insert(record, select="FROM w0")
            ctes.append(f"w1 AS ({record_sql})")
            params += record_params
        sql = f"WITH {', '.join(ctes)} {WAKE_SQL if wake else 'SELECT 1'} FROM w0"  # noqa: S608 (our SQL)
        try:
            # Alone (no outer transaction, no idempotency record) it needs no BEGIN: one
            # statement is its own transaction. In an outer transaction: a savepoint, so a
            # lost idempotency race leaves the outer transaction usable.
            if record is None and not connection.in_atomic_block:
                written = _execute(sql, params)
            else:
                with transaction.atomic():
                    if record is not None:
                        idempotency.idempotency_bound_wait()
                    written = _execute(sql, params)
            if not written:
                raise AccessRevoked
        except BaseException:
            if wake:
                _wake_undo()
            raise
        return
    with transaction.atomic():
        if not _execute(item_sql, item_params, rowcount=True):
            raise AccessRevoked
        if record is not None:
            _execute(*rawsql.insert(record))
        work_wake_notify()


def _execute(sql: str, params: list, *, rowcount: bool = False) -> bool:
    """Run `sql`; whether it returned a row (or, `rowcount`, wrote one)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if rowcount:
            return cursor.rowcount > 0
        return cursor.description is not None and cursor.fetchone() is not None
