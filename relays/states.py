"""The relay registry's states and event kinds, with no Django in it: the models use these as
their choices, and the decisions (relays.health, relays.decisions) speak them."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum


class RelayStatus(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


class Observation(StrEnum):
    """What one probe says: everything works, some of it does, or nothing does."""

    OK = "ok"
    PARTIAL = "partial"
    FAIL = "fail"


class RelayEventKind(StrEnum):
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    UNSAFE = "unsafe"
    SAFE = "safe"
    DRAINED = "drained"
    DISABLED = "disabled"
    ENABLED = "enabled"
    SECRET_STAGED = "secret-staged"
    SECRET_ROTATED = "secret-rotated"
    OVERRIDE = "override"
    CREATED = "created"
    UPDATED = "updated"
    ALLOW_PRIVATE = "allow-private"
    REPORTED = "reported"


# The event a move into each status records (a relay never moves back to unknown on a probe).
STATUS_EVENT = {
    RelayStatus.UP: RelayEventKind.UP,
    RelayStatus.DEGRADED: RelayEventKind.DEGRADED,
    RelayStatus.DOWN: RelayEventKind.DOWN,
}


def stale_after(sweep_interval: float) -> timedelta:
    """A relay with no probe newer than this is stale: we no longer know that it works."""
    return timedelta(seconds=3 * sweep_interval)


def published_lately(stats_at: datetime | None, *, now: datetime, sweep_interval: float) -> bool:
    """A relay whose coturn published allocation events within the stale window: its load is
    what it published (relays.allocations), not its unexpired grants."""
    return stats_at is not None and now - stats_at <= stale_after(sweep_interval)
