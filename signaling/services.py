"""Writes that follow from presence: the sockets of server processes that died."""

from __future__ import annotations

import logging

import redis
from django.conf import settings

from calls.services import participants_disconnect_node

from .presence import NODES_KEY, heartbeat_key, sockets_key

logger = logging.getLogger(__name__)


def presence_reap_dead_nodes(*, exclude: str | None = None) -> list[str]:
    """Find server processes whose heartbeat has expired, turn their call participants into
    `reconnecting` (the grace window then ends in a leave), and forget their entries.

    Only expired processes are touched, so any process (a new one starting, the reaper task)
    may run this while others are alive. Returns the processes reaped."""
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
    )
    reaped = []
    try:
        for raw in client.smembers(NODES_KEY):
            node = raw.decode() if isinstance(raw, bytes) else str(raw)
            if node == exclude or client.exists(heartbeat_key(node)):
                continue
            moved = participants_disconnect_node(node=node)
            client.delete(sockets_key(node))
            client.srem(NODES_KEY, node)
            reaped.append(node)
            logger.warning(
                "signaling process %s stopped beating: %d call participant(s) now reconnecting",
                node,
                moved,
            )
    finally:
        client.close()
    return reaped
