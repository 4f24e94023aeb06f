"""Channel-layer names in one place: group names and the event types consumers handle."""

from __future__ import annotations


def user_group(user_id: int) -> str:
    """Every device (socket) of one user: used for fan-out such as an incoming call."""
    return f"user.{user_id}"
