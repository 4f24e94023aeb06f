"""What coturn says about its allocations, with no Django in it: live allocations per relay, and
the bytes each credential grant moved through each relay.

coturn built with hiredis and `redis-statsdb=…` publishes, on Redis pub/sub, one channel per
allocation (coturn's turndb/schema.stats.redis):

    turn/realm/<realm>/user/<username>/allocation/<id>/status         new|refreshed lifetime=N, … | deleted
    turn/realm/<realm>/user/<username>/allocation/<id>/traffic        rcvp=…, rcvb=…, sentp=…, sentb=…
    turn/realm/<realm>/user/<username>/allocation/<id>/total_traffic  the same, once, at the end

`traffic` is a delta: coturn publishes it every 2,048 packets and starts counting again;
`total_traffic` is the allocation's whole count, published when it is deleted. A coturn that
stops or crashes publishes no end, so an allocation counts as live only until its lifetime runs
out unless a refresh says otherwise. The `/peer` channels (the relay's other side) use 32-bit
counters that wrap, and are left out: the client's side is what a grant moved.

Which relay an allocation is on comes from the username: Traverse issues `<expiry>:<grant>.<relay
key>` (relays.services.issuing) and probes as `<expiry>:probe.<relay key>`, the relay key being
the relay's id in hex. Probe allocations show that a relay publishes, but are not its load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

PROBE_PREFIX = "probe"
KEY_SEPARATOR = "."

_CHANNEL = re.compile(
    r"^turn/(?:realm/(?P<realm>[^/]*)/)?user/(?P<username>.+)/allocation/(?P<alloc>\d+)/"
    r"(?P<kind>status|traffic|total_traffic)$"
)
_NUMBER = re.compile(r"(\w+)=(\d+)")


class EventKind(StrEnum):
    NEW = "new"
    REFRESHED = "refreshed"
    DELETED = "deleted"
    TRAFFIC = "traffic"
    TOTAL = "total_traffic"


@dataclass(frozen=True)
class AllocationEvent:
    kind: EventKind
    allocation: str  # unique on its relay: "<username>/<id>"
    relay_key: str  # the relay's id in hex
    grant: str | None  # None for the prober's own allocations
    expires_at: int | None  # the username's expiry (unix seconds)
    lifetime: int = 0  # status: seconds the allocation is granted; 0 with "refreshed" ends it
    received: int = 0  # bytes from the client into the relay
    sent: int = 0  # bytes from the relay to the client


def opaque_id(*, grant: str, relay_key: str) -> str:
    """The opaque part of a grant's TURN username on one relay."""
    return f"{grant}{KEY_SEPARATOR}{relay_key}"


def probe_opaque_id(relay_key: str) -> str:
    return f"{PROBE_PREFIX}{KEY_SEPARATOR}{relay_key}"


def parse_event(channel: str, data: str) -> AllocationEvent | None:
    """One published message, or None when it is not about a Traverse allocation (another
    application's users on a shared coturn, the /peer channels, a malformed line)."""
    m = _CHANNEL.match(channel)
    if m is None:
        return None
    username = m["username"]
    head, _, opaque = username.partition(":")
    owner, sep, relay_key = opaque.rpartition(KEY_SEPARATOR)
    if not sep or not owner or not re.fullmatch(r"[0-9a-f]{32}", relay_key):
        return None
    grant = None if owner == PROBE_PREFIX else owner
    expires_at = int(head) if head.isdigit() else None
    allocation = f"{username}/{m['alloc']}"
    numbers = {k: int(v) for k, v in _NUMBER.findall(data)}
    if m["kind"] == "status":
        word = data.split(" ", 1)[0].strip().rstrip(",")
        if word == "deleted":
            kind = EventKind.DELETED
        elif word in ("new", "refreshed"):
            kind = EventKind(word)
        else:
            return None
        lifetime = numbers.get("lifetime", 0)
        if kind == EventKind.REFRESHED and lifetime == 0:
            kind = EventKind.DELETED  # a refresh with lifetime 0 is the client letting go
        return AllocationEvent(kind, allocation, relay_key, grant, expires_at, lifetime=lifetime)
    if "rcvb" not in numbers or "sentb" not in numbers:
        return None
    kind = EventKind.TRAFFIC if m["kind"] == "traffic" else EventKind.TOTAL
    return AllocationEvent(
        kind,
        allocation,
        relay_key,
        grant,
        expires_at,
        received=numbers["rcvb"],
        sent=numbers["sentb"],
    )


@dataclass
class _Live:
    relay_key: str
    grant: str | None
    until: float  # when it ends unless refreshed (unix seconds)
    received: int = 0  # counted so far
    sent: int = 0


@dataclass
class Traffic:
    received: int = 0
    sent: int = 0
    allocations: int = 0  # allocations that began

    def add(self, received: int, sent: int, allocations: int = 0) -> None:
        self.received += received
        self.sent += sent
        self.allocations += allocations


@dataclass
class AllocationBook:
    """The listener's running account: which allocations are live on which relay, and the bytes
    not yet written down, per (grant, relay key)."""

    live: dict[str, _Live] = field(default_factory=dict)
    pending: dict[tuple[str, str], Traffic] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # relay key -> last message (unix s)

    def apply(self, event: AllocationEvent, *, now: float) -> None:
        self.seen[event.relay_key] = now
        live = self.live.get(event.allocation)
        if event.kind in (EventKind.NEW, EventKind.REFRESHED):
            until = now + event.lifetime
            if event.expires_at is not None:
                # Refreshes need the credential: past its expiry, the allocation can't be renewed.
                until = min(until, event.expires_at + event.lifetime)
            if live is None:
                self.live[event.allocation] = _Live(event.relay_key, event.grant, until)
                if event.kind == EventKind.NEW:
                    self._count(event, 0, 0, allocations=1)
            else:
                live.until = until
        elif event.kind == EventKind.TRAFFIC:
            if live is not None:
                live.received += event.received
                live.sent += event.sent
            self._count(event, event.received, event.sent)
        elif event.kind == EventKind.TOTAL:
            # The whole count: add what the deltas did not (all of it, for an allocation that
            # began before this listener did, less what was counted here).
            counted = (live.received, live.sent) if live is not None else (0, 0)
            self._count(event, max(0, event.received - counted[0]), max(0, event.sent - counted[1]))
            self.live.pop(event.allocation, None)
        elif event.kind == EventKind.DELETED:
            # total_traffic follows; keep the counts until it comes, but not as live.
            if live is not None:
                live.until = min(live.until, now)

    def resume(self, event: AllocationEvent, *, now: float) -> None:
        """An allocation that was live before this listener started (coturn's status key): live
        again for its lifetime from now, with nothing counted for it yet."""
        if event.kind in (EventKind.NEW, EventKind.REFRESHED) and event.allocation not in self.live:
            self.apply(
                AllocationEvent(
                    EventKind.REFRESHED,
                    event.allocation,
                    event.relay_key,
                    event.grant,
                    event.expires_at,
                    lifetime=event.lifetime,
                ),
                now=now,
            )

    def _count(self, event: AllocationEvent, received: int, sent: int, allocations: int = 0):
        if event.grant is None:
            return
        key = (event.grant, event.relay_key)
        self.pending.setdefault(key, Traffic()).add(received, sent, allocations)

    def expire(self, *, now: float, grace: float = 60.0) -> None:
        """Forget allocations whose lifetime ran out over `grace` ago (their relay stopped, or
        its end was never published)."""
        for name in [k for k, v in self.live.items() if v.until + grace < now]:
            del self.live[name]

    def live_counts(self, *, now: float) -> dict[str, int]:
        """relay key -> live allocations of callers (not the prober's)."""
        counts: dict[str, int] = {}
        for a in self.live.values():
            if a.grant is not None and a.until > now:
                counts[a.relay_key] = counts.get(a.relay_key, 0) + 1
        return counts

    def take_pending(self) -> dict[tuple[str, str], Traffic]:
        pending, self.pending = self.pending, {}
        return pending

    def give_back(self, pending: dict[tuple[str, str], Traffic]) -> None:
        """Writing `pending` down failed: count it again with the next."""
        for key, t in pending.items():
            self.pending.setdefault(key, Traffic()).add(t.received, t.sent, t.allocations)
