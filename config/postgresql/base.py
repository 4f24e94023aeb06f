"""PostgreSQL through a pool (config/settings.py: OPTIONS["pool"]), failing fast and recovering
at once while the database is unreachable.

psycopg_pool, as it comes, made an outage worse than a connection per request had: a request
waited the pool's whole timeout for a connection that couldn't be made (1 request answered in a
10-s outage, where 20 had each had their 503 at once), and the pool retried its connection
after 1, 2, 4, 8 s, so the first request after a 10-s outage was served 4.7 s after the
database was back (was 0.03-0.06 s). Here the pool retries every RETRY_SECONDS, and once it has
failed to connect (and nothing has connected since) a request with no idle connection to take
tries to connect itself: refused at once while the database is down."""

from __future__ import annotations

import select
import threading
import weakref
from time import monotonic

import psycopg
from django.db.backends.postgresql import base
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool import base as pool_base

RETRY_SECONDS = 0.2
CONNECT_TIMEOUT_SECONDS = 3
WAIT_STEP_SECONDS = 0.25
READ_COMMITTED = IsolationLevel.READ_COMMITTED

# The pool's reconnection attempts (psycopg_pool's AttemptWithBackoff): every RETRY_SECONDS
# (± 10%), until its reconnect_timeout; a refused connect costs little.
pool_base.AttemptWithBackoff.INITIAL_DELAY = RETRY_SECONDS
pool_base.AttemptWithBackoff.DELAY_BACKOFF = 1.0

_lock = threading.Lock()
# pool -> (its successful connections, its failed attempts) when it last connected. Weak: a pool
# closed and collected (tests, a Celery child) takes its counts with it.
_last_success: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pool_cannot_connect(pool) -> bool:
    """No idle connection waits to be lent, and the pool has failed to connect since it last
    succeeded (psycopg_pool's counters: connections_num counts its attempts)."""
    stats = pool.get_stats()
    errors = stats.get("connections_errors", 0)
    made = stats.get("connections_num", 0) - errors
    with _lock:
        last_made, errors_then = _last_success.get(pool, (0, 0))
        if made > last_made:
            _last_success[pool] = last_made, errors_then = made, errors
    return not stats.get("pool_available", 0) and errors > errors_then


def check_lent_connection(conn: psycopg.Connection) -> None:
    """The pool's check of a connection it is about to lend (CONN_HEALTH_CHECKS), without a
    round trip while nothing happened to it.

    ConnectionPool.check_connection sends an empty query and waits for the answer: one round
    trip before every request's first statement, which a view that makes one statement paid
    twice over. A connection that sits idle in the pool receives nothing, unless the server
    ended it (a restart, pg_terminate_backend: it sends its FATAL error and closes), so its
    socket is read-ready only then, and only then is the full check made (and fails: the pool
    drops it and lends another). A server that vanished without a word is not caught here, nor
    by the round trip, which would wait for TCP to give up."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    try:
        ready, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error) as exc:
        raise psycopg.OperationalError(f"the connection's socket is gone: {exc}") from exc
    if ready:
        ConnectionPool.check_connection(conn)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        """Django's pool, checking connections with check_lent_connection (Django passes
        ConnectionPool.check_connection, and takes no other check from the settings)."""
        pool = super().pool
        if pool is not None and getattr(pool, "_check", None) is ConnectionPool.check_connection:
            pool._check = check_lent_connection
        return pool

    def get_new_connection(self, conn_params):
        """Django's, with the pool's wait cut into steps: a request that waits for a connection
        while the pool fails to make one tries to connect itself, and fails now (an
        OperationalError: a 503, config.middleware), not after the pool's timeout."""
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        options = self.settings_dict["OPTIONS"]
        level = options.get("isolation_level")
        self.isolation_level = IsolationLevel(level) if level is not None else READ_COMMITTED
        pool.open()
        deadline = monotonic() + pool.timeout
        while True:
            if _pool_cannot_connect(pool):
                self.Database.connect(
                    **{"connect_timeout": CONNECT_TIMEOUT_SECONDS, **conn_params}
                ).close()
            try:
                connection = pool.getconn(
                    timeout=max(0.0, min(WAIT_STEP_SECONDS, deadline - monotonic()))
                )
                break
            except PoolTimeout:
                if monotonic() >= deadline:
                    raise
        if level is not None:
            connection.isolation_level = self.isolation_level
        return connection
