"""Point-to-point delivery of frames to device sessions, without the channel layer.

channels-redis 4.3 `send` + `receive` alone cost about 1.5 ms of CPU per message here (issue 8),
more than everything else a relayed frame needs. So a frame for a device session is numbered and
kept in Redis (sessions.session_push, one Lua step), and then:
- in process, handed straight to the consumer when the session's socket is on this process;
- otherwise published, inside that same Lua step, to the Redis pub/sub channel of the process that
  holds the socket (`traverse:node:<node>`), whose one subscriber hands it to the consumer. Being
  published in the step that numbers it, frames reach each process in `seq` order.

benchmarks/signaling.py measures this against the channel layer's `send` and its pub/sub layer.

A frame lost on the way (a subscriber reconnecting after a Redis restart) is not lost for the
device: it is stored, and the consumer fills the gap from Redis when the next frame comes, or the
page gets it on resume. The channel layer stays for fan-out and control (ringing every device of
a user, sign-out).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

import redis.asyncio as aioredis
from django.conf import settings

from .presence import node_of, presence_stop
from .sessions import delivery_header, node_channel, session_push

logger = logging.getLogger(__name__)


class SessionHolder(Protocol):
    channel_name: str

    async def session_frame(self, event: dict) -> None: ...

    async def drain(self) -> None: ...


class PeerUnreachable(Exception):
    """The frame was not delivered: `code` says why (`peer_not_present`, `peer_queue_full`)."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class Hub:
    """The sessions whose sockets this process (event loop) holds, and its subscriber."""

    def __init__(self, node: str):
        self.node = node
        self.local: dict[str, SessionHolder] = {}
        self.task: asyncio.Task | None = None

    def hold(self, session: str, consumer: SessionHolder) -> None:
        self.local[session] = consumer
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._subscribe())

    def release(self, session: str, consumer: SessionHolder) -> None:
        if self.local.get(session) is consumer:
            del self.local[session]

    async def _subscribe(self) -> None:
        # Its own connection, with no read timeout: a subscriber waits for as long as it is quiet.
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_keepalive=True,
        )
        backoff = 0.2
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(node_channel(self.node))
                    backoff = 0.2
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is not None:
                            await self._dispatch(message["data"])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis restarting: frames wait in the session store
                    logger.warning(
                        "signaling hub %s: subscriber lost (%s); retrying", self.node, exc
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                finally:
                    try:
                        await pubsub.aclose()
                    except Exception:  # noqa: S110 (the connection is already broken)
                        pass
        finally:
            await client.aclose()

    async def _dispatch(self, data: bytes) -> None:
        try:
            head, seq, text = data.decode().split("\n", 2)
            session, frame, call = head.split("|", 2)
        except ValueError:  # not ours: someone else published on our channel
            logger.warning("signaling hub %s: dropped a malformed message", self.node)
            return
        consumer = self.local.get(session)
        if consumer is None:
            return  # the socket went or moved: the frame waits in the store for resume
        try:
            await consumer.session_frame(
                {
                    "session": session,
                    "seq": int(seq),
                    "text": text,
                    "frame": frame,
                    "call": call or None,
                }
            )
        except Exception:
            logger.exception("signaling hub %s: a frame for %s failed", self.node, session)


_hubs: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()

# Set once this process starts shutting down (its consumers are being cancelled): new sockets
# are sent elsewhere (close 4012) and the health endpoint answers 503.
_draining = False


def process_drain() -> None:
    global _draining
    _draining = True


def process_draining() -> bool:
    return _draining


def process_sockets() -> int:
    """Device sessions held by this process's sockets."""
    return sum(len(h.local) for h in list(_hubs.values()))


def hub_for(node: str) -> Hub:
    """This event loop's hub (one per process under Daphne; one per test loop in tests)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.node != node:
        hub = _hubs[loop] = Hub(node)
    return hub


def running_hub() -> Hub | None:
    """The hub of this event loop, if a consumer on it started one."""
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


async def deliver(
    redis: aioredis.Redis,
    *,
    session: str,
    frame: str,
    call: str | None,
    text: str,
    limit: int = 0,
    hub: Hub | None = None,
) -> int:
    """Number, keep and deliver one frame for a device session; returns its seq.

    Raises PeerUnreachable: `peer_not_present` when the session is gone (its grace window ran
    out), `peer_queue_full` when `limit` frames already wait for a device that is away."""
    hub = hub or running_hub()
    target = hub.local.get(session) if hub is not None else None
    header = delivery_header(session, frame, call)
    seq, channel = await session_push(
        redis, session=session, text=text, publish="" if target else header, limit=limit
    )
    if seq == 0:
        raise PeerUnreachable("peer_not_present")
    if seq < 0:
        raise PeerUnreachable("peer_queue_full")
    if target is not None and channel:
        event = {"session": session, "seq": seq, "text": text, "frame": frame, "call": call}
        if channel == target.channel_name:
            await target.session_frame(event)
        else:  # the session moved to another socket since this process last held it
            await redis.publish(node_channel(node_of(channel)), f"{header}\n{seq}\n{text}".encode())
    return seq


async def process_drain_sockets(timeout: float = 5.0) -> int:
    """This process is stopping: take no new sockets, and tell each open one to reconnect
    elsewhere at once (close 4012); their device sessions are detached, so another process can
    resume them. Returns how many were told."""
    process_drain()
    holders = [c for h in list(_hubs.values()) for c in list(h.local.values())]
    if holders:
        await asyncio.wait([asyncio.ensure_future(c.drain()) for c in holders], timeout=timeout)
        # The close frames are written by the reactor's next turns, and the pages answer them:
        # cut the connections right after, and they were never sent (seen: 1006, not 4012).
        await asyncio.sleep(0.3)
    await presence_stop()
    logger.info("signaling: drained %d socket(s) before stopping", len(holders))
    return len(holders)


def install_daphne_drain() -> None:
    """Under Daphne, drain before the reactor stops (SIGTERM, SIGINT). Daphne's own trigger
    cancels every consumer but can fail before it does (daphne 4.2.3 raises KeyError on a
    connection without an application), and then sockets are only cut, never told."""
    from twisted.internet import defer
    from twisted.internet import reactor as twisted_reactor

    reactor: Any = twisted_reactor  # zope interfaces confuse mypy about `self`

    def before_shutdown():
        return defer.Deferred.fromFuture(asyncio.ensure_future(process_drain_sockets()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
