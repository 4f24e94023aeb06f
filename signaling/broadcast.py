"""Announce signaling events from sync code (services), after the data they describe is committed.

Broadcasts after commit are best effort: the data is stored, and a channel layer that is down
for a moment must not turn a committed change into an error for the caller. They are logged.
Where delivery is part of the outcome (ringing a new call), services use send_to_users_now and
handle BROADCAST_ERRORS themselves.

From a consumer, services run in a worker thread (database_sync_to_async). Sending from that
thread would hop back to the server's event loop and wait for it; while the server shuts down
that loop is gone, and the thread waited forever (Daphne then never exited). So consumers call
services through `run_and_announce`: the events are collected in the thread and sent by the
consumer itself, on its own loop, once the service has returned.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextvars import ContextVar

import redis.exceptions
from asgiref.sync import async_to_sync
from channels.db import DatabaseSyncToAsync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections, transaction

from .groups import user_group
from .hub import PeerUnreachable, deliver
from .presence import redis_client, redis_for_loop
from .sessions import close_pipeline, frame_text

logger = logging.getLogger(__name__)

BROADCAST_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)

# (kind, targets, event) collected for the consumer that called the service, or None.
_collected: ContextVar[list[tuple[str, list, dict]] | None] = ContextVar(
    "traverse_broadcasts", default=None
)


def send_to_users_now(user_ids, event: dict) -> None:
    """group_send `event` to every device of each user; raises BROADCAST_ERRORS."""
    layer = get_channel_layer()
    for uid in set(user_ids):
        async_to_sync(layer.group_send)(user_group(uid), event)


async def push_to_session(session: str, event: dict, *, redis) -> None:
    """Hand a frame to one device session (signaling.hub: in process, or through its process's
    pub/sub channel), whose owner numbers and keeps it; or keep it for a device that is away.

    `event` is {"frame": type, "call": id, "body": {...}}. A session that is gone (its grace
    window ran out) drops the frame; a socket that is away gets it when it resumes.
    """
    text = frame_text(event["frame"], call=event.get("call"), body=event.get("body"))
    with contextlib.suppress(PeerUnreachable):
        await deliver(
            redis, session=session, frame=event["frame"], call=event.get("call"), text=text
        )


async def _deliver(kind: str, targets, event: dict, *, loop_client: bool = True) -> None:
    """Send one announcement: to every device of each user ("users"), or into device sessions
    ("sessions", numbered and replayable).

    `loop_client` uses this loop's cached Redis client (a consumer's loop lives as long as the
    server); sync code (async_to_sync, one short-lived loop per call) opens and closes its own.
    """
    layer = get_channel_layer()
    own = None
    try:
        if kind == "sessions":
            redis = redis_for_loop() if loop_client else (own := redis_client())
            for target in targets:
                await push_to_session(target, event, redis=redis)
            return
        for target in targets:
            await layer.group_send(user_group(target), event)
    except BROADCAST_ERRORS as exc:
        logger.warning("could not announce %s: %s", event.get("type") or event.get("frame"), exc)
    finally:
        if own is not None:
            await close_pipeline(own)
            await own.aclose()


def _on_commit(kind: str, targets, event: dict) -> None:
    targets = [t for t in set(targets) if t]
    collector = _collected.get()

    def send() -> None:
        if collector is not None:
            collector.append((kind, targets, event))
        else:
            async_to_sync(_deliver)(kind, targets, event, loop_client=False)

    transaction.on_commit(send)


def send_to_users_on_commit(user_ids, event: dict) -> None:
    """group_send `event` to every device of each user, once the transaction commits."""
    _on_commit("users", list(user_ids), event)


def send_to_sessions_on_commit(sessions, frame: str, *, call=None, body=None) -> None:
    """Push a frame into device sessions (numbered, replayed on resume), once committed."""
    _on_commit(
        "sessions",
        list(sessions),
        {"frame": frame, "call": str(call) if call is not None else None, "body": body or {}},
    )


_db_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _db_pool
    if _db_pool is None:
        _db_pool = ThreadPoolExecutor(
            max_workers=settings.SIGNALING_DB_THREADS, thread_name_prefix="signaling-db"
        )
    return _db_pool


def db_pool_close_connections() -> None:
    """Close the database connection of every pool thread (each runs one close: a barrier
    keeps them from all landing on the same thread). For shutdown and tests."""
    pool = _pool()
    n = settings.SIGNALING_DB_THREADS
    barrier = threading.Barrier(n)

    def close() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(5)
        connections.close_all()

    futures_wait([pool.submit(close) for _ in range(n)], timeout=30)


def in_db_pool(func):
    """Run sync database code from a consumer in a pool of SIGNALING_DB_THREADS threads, each
    with its own connection (closing stale ones before and after, as database_sync_to_async
    does).

    database_sync_to_async runs every consumer's database work in one thread per process: 5,000
    sockets joining (and 1,000 leaving) queued behind each other there for minutes, and Daphne
    dropped handshakes that waited more than 5 s. Services lock what they change (they already
    run side by side in several processes), so threads are as safe as processes."""
    return DatabaseSyncToAsync(func, thread_sensitive=False, executor=_pool())


async def run_and_announce(service, **kwargs):
    """Run a sync service from async code, then send what it announced, from this loop."""
    events: list[tuple[str, list, dict]] = []
    token = _collected.set(events)
    try:
        result = await in_db_pool(service)(**kwargs)
    finally:
        _collected.reset(token)
    for kind, targets, event in events:
        await _deliver(kind, targets, event)
    return result
