"""The pool checks a connection before it lends it (CONN_HEALTH_CHECKS), without a round trip
while nothing happened to the connection (config.postgresql.base.check_lent_connection)."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from config.postgresql.base import check_lent_connection

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the pool is PostgreSQL's; SQLite has no server"
    ),
]


@pytest.fixture
def conn():
    params = connection.get_connection_params()
    with psycopg.connect(**{**params, "autocommit": True}) as c:
        yield c


def sent_by(conn, tmp_path, check) -> str:
    """What libpq sent and received while `check` ran on the connection (its trace)."""
    trace = tmp_path / "trace"
    with open(trace, "w") as f:
        conn.pgconn.trace(f.fileno())
        try:
            check(conn)
        finally:
            conn.pgconn.untrace()
    return trace.read_text()


def test_an_idle_healthy_connection_is_checked_without_a_round_trip(conn, tmp_path):
    conn.execute("SELECT 1")
    assert sent_by(conn, tmp_path, check_lent_connection) == ""
    # The round trip it saves: psycopg_pool's own check sends a query and reads the answer.
    assert "Query" in sent_by(conn, tmp_path, ConnectionPool.check_connection)


def test_a_connection_the_server_ended_fails_the_check(conn):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    deadline = time.monotonic() + 5
    with pytest.raises(psycopg.OperationalError):
        while time.monotonic() < deadline:  # the server's FATAL and close take a moment
            check_lent_connection(conn)
            time.sleep(0.01)


def test_a_closed_connection_fails_the_check(conn):
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        check_lent_connection(conn)


def test_the_pool_checks_with_it():
    """psycopg_pool keeps its check in `_check`: this fails if that moves (the round trip
    would silently come back)."""
    assert connection.pool._check is check_lent_connection
