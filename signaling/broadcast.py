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

import logging
from contextvars import ContextVar

import redis.exceptions
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from .groups import user_group

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


async def _deliver(kind: str, targets, event: dict) -> None:
    """Send one announcement: to every device of each user ("users"), or to device channels."""
    layer = get_channel_layer()
    try:
        for target in targets:
            if kind == "users":
                await layer.group_send(user_group(target), event)
            else:
                await layer.send(target, event)
    except BROADCAST_ERRORS as exc:
        logger.warning("could not announce %s: %s", event.get("type"), exc)


def _on_commit(kind: str, targets, event: dict) -> None:
    targets = [t for t in set(targets) if t]
    collector = _collected.get()

    def send() -> None:
        if collector is not None:
            collector.append((kind, targets, event))
        else:
            async_to_sync(_deliver)(kind, targets, event)

    transaction.on_commit(send)


def send_to_users_on_commit(user_ids, event: dict) -> None:
    """group_send `event` to every device of each user, once the transaction commits."""
    _on_commit("users", list(user_ids), event)


def send_to_channels_on_commit(channel_names, event: dict) -> None:
    """send `event` to specific device channels, once the transaction commits."""
    _on_commit("channels", list(channel_names), event)


async def run_and_announce(service, **kwargs):
    """Run a sync service from async code, then send what it announced, from this loop."""
    events: list[tuple[str, list, dict]] = []
    token = _collected.set(events)
    try:
        result = await database_sync_to_async(service)(**kwargs)
    finally:
        _collected.reset(token)
    for kind, targets, event in events:
        await _deliver(kind, targets, event)
    return result
