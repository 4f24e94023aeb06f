"""Announce signaling events from sync code (services), after the data they describe is committed.

Broadcasts after commit are best effort: the data is stored, and a channel layer that is down
for a moment must not turn a committed change into an error for the caller. They are logged.
Where delivery is part of the outcome (ringing a new call), services use send_to_users_now and
handle BROADCAST_ERRORS themselves.
"""

from __future__ import annotations

import logging

import redis.exceptions
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .groups import user_group

logger = logging.getLogger(__name__)

BROADCAST_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def send_to_users_now(user_ids, event: dict) -> None:
    """group_send `event` to every device of each user; raises BROADCAST_ERRORS."""
    layer = get_channel_layer()
    for uid in set(user_ids):
        async_to_sync(layer.group_send)(user_group(uid), event)


def send_to_users_on_commit(user_ids, event: dict) -> None:
    """group_send `event` to every device of each user, once the transaction commits."""

    def send() -> None:
        try:
            send_to_users_now(user_ids, event)
        except BROADCAST_ERRORS as exc:
            logger.warning("could not announce %s to users: %s", event.get("type"), exc)

    transaction.on_commit(send)


def send_to_channels_on_commit(channel_names, event: dict) -> None:
    """send `event` to specific device channels, once the transaction commits."""

    def send() -> None:
        layer = get_channel_layer()
        try:
            for name in set(channel_names):
                if name:
                    async_to_sync(layer.send)(name, event)
        except BROADCAST_ERRORS as exc:
            logger.warning("could not announce %s to devices: %s", event.get("type"), exc)

    transaction.on_commit(send)
