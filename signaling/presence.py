"""Which server processes are alive, and which signaling sockets each one holds.

Presence is owned per process, not per socket: each process refreshes one heartbeat key
(`PRESENCE_TTL_SECONDS`, every third of it) and lists its sockets in one hash under it, written
only when a socket opens or closes. A thousand idle sockets cost one Redis write per heartbeat,
not a thousand. A process that dies (SIGKILL, a crash, a lost machine) stops refreshing; once its
key has expired, whoever looks next (another process starting, or the reaper task) finds its
sockets and turns their call participants into `reconnecting`, so the grace window runs out and
the leave happens: a dead process leaves no ghosts. A process only ever cleans entries of
processes whose heartbeat has expired, so several processes can share one Redis.

A process is named by its channel layer's client prefix: every channel name it hands out is
`specific.<prefix>!<socket>`, so the owner of a channel name can be read off the name itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger(__name__)

NODES_KEY = "traverse:presence:nodes"


def heartbeat_key(node: str) -> str:
    return f"traverse:presence:node:{node}"


def sockets_key(node: str) -> str:
    return f"traverse:presence:node:{node}:sockets"


def node_of(channel_name: str) -> str:
    """The process that owns a channel name (`specific.<prefix>!<socket>` -> `specific.<prefix>`)."""
    return channel_name.split("!", 1)[0]


def redis_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
    )


_clients: weakref.WeakKeyDictionary[Any, aioredis.Redis] = weakref.WeakKeyDictionary()


def redis_for_loop() -> aioredis.Redis:
    """This event loop's Redis client (Daphne has one loop; each test has its own): presence
    and device sessions share it."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = redis_client()
    return client


def _reap_dead_nodes(node: str) -> None:
    from django.db import connections

    from .services import presence_reap_dead_nodes

    try:
        presence_reap_dead_nodes(exclude=node)
    finally:
        connections.close_all()  # this thread's, once: it runs once per process


class ProcessPresence:
    """The heartbeat of one server process (one event loop) and the sockets it holds."""

    def __init__(self, node: str):
        self.node = node
        self.ttl = settings.PRESENCE_TTL_SECONDS
        self.redis = redis_for_loop()
        self.sockets: dict[str, int] = {}
        self.task: asyncio.Task | None = None
        self.reaping: asyncio.Future | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _reap_dead(self) -> None:
        try:
            await asyncio.to_thread(_reap_dead_nodes, self.node)
        except Exception as exc:  # the reaper task finds them later
            logger.warning("presence: dead processes not reaped at start-up: %s", exc)

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self.beat()
                if first:
                    first = False
                    # Start-up: the entries of processes that died before we came up. Beside
                    # the heartbeat, on a thread of its own: a dead process with a thousand
                    # devices takes seconds, and sockets opening meanwhile must not wait for it
                    # (they did, on the one database thread, and Daphne dropped their
                    # handshakes after 5 s), nor may the next beat.
                    self.reaping = asyncio.ensure_future(self._reap_dead())
            except asyncio.CancelledError:
                await self._stop_beating()
                raise
            except Exception as exc:  # Redis down: keep beating; sockets reconnect meanwhile
                logger.warning("presence heartbeat of %s failed: %s", self.node, exc)
            try:
                await asyncio.sleep(self.ttl / 3)
            except asyncio.CancelledError:
                await self._stop_beating()
                raise

    async def _stop_beating(self) -> None:
        """The process is shutting down: drop the heartbeat now rather than let it run out, so
        the reaper (or the next process to start) hands this process's devices their grace
        window within seconds, not PRESENCE_TTL_SECONDS."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.delete(heartbeat_key(self.node)), 1.0)

    async def beat(self) -> None:
        """Refresh the heartbeat, and re-list this process and its sockets (a Redis that
        restarted has forgotten them)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(heartbeat_key(self.node), "1", ex=max(1, int(self.ttl)))
            pipe.sadd(NODES_KEY, self.node)
            if self.sockets:
                pipe.hset(sockets_key(self.node), mapping=self.sockets)  # type: ignore[arg-type]
            await pipe.execute()

    async def add_socket(self, channel_name: str, user_id: int) -> None:
        self.sockets[channel_name] = user_id
        self.start()
        with contextlib.suppress(Exception):  # the next heartbeat writes it again
            await self.redis.hset(sockets_key(self.node), channel_name, user_id)

    async def remove_socket(self, channel_name: str) -> None:
        self.sockets.pop(channel_name, None)
        with contextlib.suppress(Exception):
            await self.redis.hdel(sockets_key(self.node), channel_name)


_by_loop: weakref.WeakKeyDictionary[Any, ProcessPresence] = weakref.WeakKeyDictionary()


def presence_for(channel_name: str) -> ProcessPresence:
    """This event loop's presence (one per process in Daphne; one per test loop in tests)."""
    loop = asyncio.get_running_loop()
    presence = _by_loop.get(loop)
    if presence is None or presence.node != node_of(channel_name):
        presence = _by_loop[loop] = ProcessPresence(node_of(channel_name))
    return presence


async def presence_stop() -> None:
    """The process is stopping: stop beating now, so other processes hand the devices it still
    holds their grace window within seconds (rather than after PRESENCE_TTL_SECONDS)."""
    for presence in list(_by_loop.values()):
        if presence.task is not None:
            presence.task.cancel()
        await presence._stop_beating()
