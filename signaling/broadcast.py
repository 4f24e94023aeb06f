"""Announce signaling events from sync code (services), after the data they describe is committed."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .groups import user_group


def send_to_users_on_commit(user_ids, event: dict) -> None:
    """group_send `event` to every device of each user, once the transaction commits."""

    def send() -> None:
        layer = get_channel_layer()
        for uid in set(user_ids):
            async_to_sync(layer.group_send)(user_group(uid), event)

    transaction.on_commit(send)


def send_to_channels_on_commit(channel_names, event: dict) -> None:
    """send `event` to specific device channels, once the transaction commits."""

    def send() -> None:
        layer = get_channel_layer()
        for name in set(channel_names):
            if name:
                async_to_sync(layer.send)(name, event)

    transaction.on_commit(send)
