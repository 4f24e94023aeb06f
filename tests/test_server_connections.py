"""Connections of a real server process, to PostgreSQL and to Redis: reused across requests.

Under Daphne, Django runs each HTTP request's sync code in a thread and a context of its own,
and Django keeps database connections per thread and cache clients per context. So every
request opened a new PostgreSQL connection (with persistent connections, CONN_MAX_AGE) and
every request that touched the cache a new Redis connection, each left open until the garbage
collector found it. Now a pool lends each request a database connection and takes it back
(settings: OPTIONS["pool"]), and the process has one cache client (config.cache)."""

from __future__ import annotations

import concurrent.futures
import urllib.error
import urllib.request

import pytest
import redis
from django.db import connection

from tests.conftest import wait_for
from tests.signaling.conftest import session_cookie
from tests.signaling.test_two_processes import Daphne

pytestmark = [pytest.mark.django_db(transaction=True)]
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the pool is PostgreSQL's; SQLite has no server"
)

POOL_MAX = 3
REQUESTS = 60


def get(server: Daphne, cookie: str, path: str) -> tuple[int, bytes]:
    """A signed-in GET of `path` (`cookie`: the session's, session_cookie): status and body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}", headers={"Cookie": f"sessionid={cookie}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def backends_since(start) -> int:
    """Connections to the test database opened since `start`, other than this one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_start >= %s",
            [start],
        )
        return cursor.fetchone()[0]


def now_in_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


@on_postgresql
def test_a_server_process_reuses_a_few_connections_for_many_requests(web, alice):
    server, cookie = web(DATABASE_POOL_MAX=str(POOL_MAX)), session_cookie(alice)
    status, body = get(server, cookie, "/calls/")  # signed in: the session and user are read
    assert status == 200 and b"/accounts/logout/" in body, body[:300]
    start = now_in_database()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 4 at a time, 60 in all
        results = list(pool.map(lambda _: get(server, cookie, "/calls/"), range(REQUESTS)))
    assert all(status == 200 for status, _ in results)
    # Each of the 60 requests opened one before; now at most the pool's size are opened.
    assert backends_since(start) <= POOL_MAX


@on_postgresql
def test_pooled_connections_the_database_dropped_are_not_lent_again(web, alice):
    """PostgreSQL restarted (here: every connection of the server terminated, and gone, as they
    are once a restarted server answers again): the next requests get fresh connections (each is
    checked as it is lent), not an error."""
    server, cookie = web(DATABASE_POOL_MAX=str(POOL_MAX)), session_cookie(alice)

    def history() -> int:
        return get(server, cookie, "/calls/")[0]

    with concurrent.futures.ThreadPoolExecutor(POOL_MAX) as pool:
        assert set(pool.map(lambda _: history(), range(12))) == {200}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        ended = [pid for pid, terminated in cursor.fetchall() if terminated]
    assert ended
    wait_for(lambda: not still_connected(ended), 10)
    assert [history() for _ in range(POOL_MAX * 2)] == [200] * (POOL_MAX * 2)


def still_connected(pids: list[int]) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
        return cursor.fetchone()[0] > 0


def redis_connections_received(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def test_a_server_process_reuses_its_redis_connections_for_many_requests(web, alice, stats_redis):
    """Each ICE request counts against the caller's rate limit in the Redis cache (the later
    ones are refused with 429: counted all the same). The server has a Redis of its own, so
    only its connections are counted."""
    server = web(RATELIMIT_ENABLE="true", REDIS_URL=stats_redis.url)
    cookie = session_cookie(alice)

    def ice() -> int:
        return get(server, cookie, "/api/v1/ice-servers/")[0]

    assert ice() == 200
    before = redis_connections_received(stats_redis.url)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: ice(), range(REQUESTS)))
    assert set(statuses) <= {200, 429} and 429 in statuses  # the limit was counted
    # Each request opened one before (61 for 60); now the pool's few, and this test's own.
    assert redis_connections_received(stats_redis.url) - before <= 6
