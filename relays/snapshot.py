"""The fleet as selection reads it, kept in each process for RELAY_SNAPSHOT_SECONDS.

Loading 1,000 relays (with their load) took ~45 ms a request (benchmarks/assignment.py), so
each process keeps one snapshot of every enabled relay (what relays.scoring needs, and what
issuing needs of the chosen ones) and the admin's address ranges, and builds it again when it
is older than RELAY_SNAPSHOT_SECONDS (2 s). A relay's health comes from the sweep, which runs
every RELAY_SWEEP_INTERVAL anyway; an admin's change in this process drops the snapshot at
once (`fleet_changed`), in other processes it shows within twice the snapshot's age. Freshness
(staleness of a relay's last probe) is judged per request against the clock, not the
snapshot's age.

No request waits for a build while the snapshot it finds is less than twice
RELAY_SNAPSHOT_SECONDS old: it is served that one, and a thread builds the next (a build of
1,000 relays took 20-45 ms, and every request arriving meanwhile queued behind it). A request
that finds none, or one older than that (a quiet process), builds it itself, as before.

Load: a relay's live allocations as its coturn published them (relays.allocations), or, where
it doesn't publish, its unexpired grants, as of the build; this process adds the ones it issues
meanwhile, so a crowd arriving within one snapshot still spreads.
RELAY_SNAPSHOT_SECONDS = 0 reads the database on every request (the in-process tests do).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Count, Q
from django.utils import timezone

from .ice_urls import IceUrlError, parse_ice_url
from .models import RegionRange, Relay
from .scoring import Candidate, Merged, RegionOrders, eligible_but_for_time
from .states import RelayStatus, published_lately

logger = logging.getLogger("relays.snapshot")

NEVER_PROBED = datetime.min.replace(tzinfo=UTC)  # stale at any time
MAX_RANKINGS = 512  # kept per snapshot (regions, and networks whose clients measured relays)

_FIELDS = (
    "id",
    "name",
    "urls",
    "secret",
    "enabled",
    "draining",
    "unsafe",
    "unsafe_override",
    "audited_at",
    "status",
    "last_checked_at",
    "last_rtt_ms",
    "region",
    "failure_domain",
    "capacity",
    "weight",
    "live_allocations",
    "stats_at",
)


@dataclass
class Fleet:
    candidates: dict[str, Candidate]
    rows: dict[str, dict]
    # Those that pass everything but freshness and capacity (judged per request).
    assignable: list[str]  # what issuing needs of a relay: name, urls, secret, region
    ranges: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]
    built: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # network -> relay -> (pair round trip, gather time), as clients measured them
    measured: dict[str, dict[str, tuple[float | None, float | None]]] = field(default_factory=dict)
    # The assignable relays sorted for callers of each region (made with the snapshot): a
    # region's ranking is a merge of these, made as far as choosing reads it.
    orders: RegionOrders = field(default_factory=lambda: RegionOrders.of([]))
    # network -> the relays its clients measured, as selection scores them there
    measured_candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    # Rankings made from this snapshot (relays.selectors): key -> ((value, name, relay id) best
    # first, when the first of them goes stale)
    rankings: dict[tuple[str, str], tuple[Merged, datetime]] = field(default_factory=dict)
    # The assignable relays by their last probe, oldest first (never probed: NEVER_PROBED), and
    # those probes: the ones stale at a given time are a prefix (`stale`).
    by_check: list[str] = field(default_factory=list)
    checks: list[datetime] = field(default_factory=list)

    @functools.cached_property
    def assignable_ids(self) -> frozenset[str]:
        return frozenset(self.assignable)

    def stale(self, now: datetime, fresh: timedelta) -> tuple[frozenset[str], datetime | None]:
        """The assignable relays whose last probe is more than `fresh` old at `now` (or that
        were never probed), and when the next of them goes stale (None: all are)."""
        n = bisect.bisect_left(self.checks, now - fresh)
        until = self.checks[n] + fresh if n < len(self.checks) else None
        return frozenset(self.by_check[:n]), until

    def ranking(self, key: tuple[str, str], now: datetime) -> Merged | None:
        """A ranking kept for `key`, unless one of its relays has gone stale since."""
        found = self.rankings.get(key)
        if found is None or now > found[1]:
            return None
        return found[0]

    def keep_ranking(self, key: tuple[str, str], entries: Merged, valid_until: datetime) -> None:
        if len(self.rankings) >= MAX_RANKINGS:
            self.rankings.clear()
        self.rankings[key] = (entries, valid_until)

    def client_rtts(self, network: str, read) -> dict[str, tuple[float | None, float | None]]:
        """What clients on `network` measured (read once per snapshot and network)."""
        if not network:
            return {}
        found = self.measured.get(network)
        if found is None:
            found = self.measured[network] = read(network)
        return found

    def relay(self, relay_id: str) -> Relay:
        """An unsaved-looking Relay with its id and the fields issuing reads (no query)."""
        row = self.rows[relay_id]
        relay = Relay(**row)
        relay._state.adding = False  # a stored row, as far as Django is concerned
        relay._state.db = DEFAULT_DB_ALIAS
        return relay

    def region_of(self, address) -> str | None:
        """The longest matching range's region (ranges are kept longest prefix first)."""
        for network, region in self.ranges:
            if address.version == network.version and address in network:
                return region
        return None

    def issued(self, relay_ids) -> None:
        """This process handed these relays out: their load goes up until the next build."""
        with self.lock:
            for relay_id in relay_ids:
                c = self.candidates.get(str(relay_id))
                if c is not None:
                    self.candidates[c.id] = replace(c, allocations=c.allocations + 1)


def build() -> Fleet:
    now = timezone.now()
    candidates: dict[str, Candidate] = {}
    rows: dict[str, dict] = {}
    for r in (
        Relay.objects.filter(enabled=True)
        .annotate(live_grants=Count("grants", filter=Q(grants__expires_at__gt=now)))
        .values(*_FIELDS, "live_grants")
    ):
        try:
            has_turn = any(parse_ice_url(u).is_turn for u in r["urls"])
        except IceUrlError:
            has_turn = False
        relay_id = str(r["id"])
        # Published lately (coturn's redis-statsdb): as loaded as it says; else as many
        # unexpired grants as name it.
        published = published_lately(
            r["stats_at"], now=now, sweep_interval=settings.RELAY_SWEEP_INTERVAL
        )
        candidates[relay_id] = Candidate(
            id=relay_id,
            name=r["name"],
            enabled=r["enabled"],
            draining=r["draining"],
            safe=r["unsafe_override"] or (not r["unsafe"] and r["audited_at"] is not None),
            has_turn=has_turn,
            checked_at=r["last_checked_at"],
            region=r["region"],
            failure_domain=r["failure_domain"],
            status=RelayStatus(r["status"]),
            prober_rtt_ms=r["last_rtt_ms"],
            allocations=r["live_allocations"] if published else r["live_grants"],
            load_source="published" if published else "grants",
            capacity=r["capacity"],
            weight=r["weight"],
        )
        rows[relay_id] = {
            "id": r["id"],
            "name": r["name"],
            "urls": r["urls"],
            "secret": r["secret"],
            "region": r["region"],
        }
    ranges = []
    for network, region in RegionRange.objects.values_list("network", "region"):
        try:
            ranges.append((ipaddress.ip_network(network, strict=False), region))
        except ValueError:
            continue
    ranges.sort(key=lambda nr: -nr[0].prefixlen)
    # In name order: ranking sorts by name and then by value (relays.scoring.ranked).
    assignable = sorted(
        (i for i, c in candidates.items() if eligible_but_for_time(c)),
        key=lambda i: candidates[i].name,
    )
    by_check = sorted(assignable, key=lambda i: candidates[i].checked_at or NEVER_PROBED)
    return Fleet(
        candidates=candidates,
        rows=rows,
        ranges=ranges,
        assignable=assignable,
        orders=RegionOrders.of([candidates[i] for i in assignable]),
        by_check=by_check,
        checks=[candidates[i].checked_at or NEVER_PROBED for i in by_check],
    )


_current: Fleet | None = None
_building = threading.Lock()
# Bumped by every drop: a build that began before a drop (a change committed meanwhile) is not
# kept, as it may hold the old rows.
_generation = 0
_installing = threading.Lock()


def _install(built: Fleet, generation: int) -> None:
    global _current
    with _installing:
        if generation == _generation:
            _current = built


def fleet() -> Fleet:
    """This process's snapshot. Older than RELAY_SNAPSHOT_SECONDS: built again, in a thread of
    its own while this one is served (up to twice that age), else here."""
    ttl = settings.RELAY_SNAPSHOT_SECONDS
    if ttl <= 0:
        return build()
    current = _current
    if current is not None:
        age = time.monotonic() - current.built
        if age < ttl:
            return current
        if age < 2 * ttl:
            _rebuild_in_background()
            return current
    with _building:  # one build at a time; the others take what it built
        current = _current
        if current is not None and time.monotonic() - current.built < ttl:
            return current
        generation = _generation
        current = build()
        _install(current, generation)
        return current


def _rebuild_in_background() -> None:
    """Start a build in a thread of its own, unless one is under way."""
    if not _building.acquire(blocking=False):
        return
    try:
        threading.Thread(
            target=_rebuild, args=(_generation,), name="relay-snapshot", daemon=True
        ).start()
    except BaseException:
        _building.release()
        raise


def _rebuild(generation: int) -> None:
    try:
        _install(build(), generation)
    except Exception:
        # The old snapshot is served until it is twice RELAY_SNAPSHOT_SECONDS old; then a
        # request builds it and meets the error itself.
        logger.exception("the relay snapshot could not be built; keeping the last one")
    finally:
        connections.close_all()  # this thread's connection goes back to the pool
        _building.release()


def wait_for_build() -> None:
    """Return once no build is under way (one in a thread ends first, its connection with it)."""
    with _building:
        pass


def fleet_changed(**_kwargs) -> None:
    """A relay or an address range changed here: the next request builds a new snapshot (once
    the change is committed: a snapshot built before that would hold the old rows)."""
    transaction.on_commit(_drop)


def drop_snapshot() -> None:
    """Build afresh on the next request (now, not on commit)."""
    global _current, _generation
    with _installing:
        _generation += 1
        _current = None


_drop = drop_snapshot
