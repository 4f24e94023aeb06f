"""Point-to-point delivery of frames to device sessions, without the channel layer.

channels-redis 4.3 `send` + `receive` alone cost about 1.5 ms of CPU per message here (issue 8),
more than everything else a relayed frame needs. So a frame for a device session goes:
- in process, straight to the consumer that holds the session's socket, which numbers, sends
  and keeps it (sessions.py: the owner numbers);
- otherwise through one Lua step (sessions.session_push) that forwards it to the Redis pub/sub
  channel of the process that holds the socket (`traverse:node:<node>`), whose one subscriber
  hands it to the consumer; or numbers and keeps it while the device is away.

benchmarks/signaling.py measures this against the channel layer's `send` and its pub/sub layer.

A frame forwarded while nobody listens for the owner's process waits in the session's inbox: the
subscriber takes its sessions' inboxes each time it (re)subscribes, and a resume takes it too.
The channel layer stays for fan-out and control (ringing every device of a user, sign-out).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

import redis.asyncio as aioredis
from django.conf import settings

from .presence import presence_stop, redis_for_loop
from .sessions import (
    MOVED,
    delivery_header,
    node_channel,
    parse_forwarded,
    session_push,
    session_take_inbox,
)

logger = logging.getLogger(__name__)


class SessionHolder(Protocol):
    channel_name: str

    async def session_frame(self, event: dict) -> None: ...

    def takes_now(self) -> bool: ...

    def session_frame_now(self, event: dict) -> None: ...

    def session_moved(self) -> None: ...

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
        self.relayed_at_once = 0  # frames relayed in the callback that read them (_direct)

    def hold(self, session: str, consumer: SessionHolder) -> None:
        previous = self.local.get(session)
        self.local[session] = consumer
        if previous is not None and previous is not consumer:
            previous.session_moved()  # resumed on another socket of this process
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
                    await self._take_inboxes()
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

    async def _take_inboxes(self) -> None:
        """Frames forwarded while this subscriber was away waited in their sessions' inboxes."""
        redis = redis_for_loop()
        for session in list(self.local):
            try:
                waiting = await session_take_inbox(redis, session=session)
            except Exception as exc:
                logger.warning(
                    "signaling hub %s: inbox of %s not read: %s", self.node, session, exc
                )
                continue
            for data in waiting:
                await self._dispatch(data)

    async def _dispatch(self, data: bytes) -> None:
        try:
            session, frame, call, text = parse_forwarded(data)
        except ValueError:  # not ours: someone else published on our channel
            logger.warning("signaling hub %s: dropped a malformed message", self.node)
            return
        consumer = self.local.get(session)
        if frame == MOVED:  # resumed on another socket: `text` is the channel it left
            if consumer is not None and consumer.channel_name == text:
                del self.local[session]
                consumer.session_moved()
            return
        try:
            if consumer is not None:
                await consumer.session_frame(
                    {"session": session, "text": text, "frame": frame, "call": call}
                )
            else:  # the socket went or moved since: on to wherever the session is now
                await deliver(
                    redis_for_loop(), session=session, frame=frame, call=call, text=text, hub=self
                )
        except PeerUnreachable:
            pass  # the session ended meanwhile
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


def process_relayed_at_once() -> int:
    """Frames this process relayed socket to socket at once, with no task woken (consumers'
    `_direct`, under Daphne), since it started."""
    return sum(h.relayed_at_once for h in list(_hubs.values()))


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
) -> None:
    """Deliver one frame (without its seq) to a device session, wherever its socket is.

    Raises PeerUnreachable: `peer_not_present` when the session is gone (its grace window ran
    out), `peer_queue_full` when `limit` frames already wait for a device that is away."""
    hub = hub or running_hub()
    target = hub.local.get(session) if hub is not None else None
    if target is not None:
        await target.session_frame({"session": session, "text": text, "frame": frame, "call": call})
        return
    code, _ = await session_push(
        redis,
        session=session,
        text=text,
        publish=delivery_header(session, frame, call),
        limit=limit,
    )
    if code == 0:
        raise PeerUnreachable("peer_not_present")
    if code == -1:
        raise PeerUnreachable("peer_queue_full")


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
