"""Which relays a caller gets, with no Django in it: score every eligible relay for this caller,
then pick the best and a fallback.

Lower scores are better. A score adds up, in milliseconds-like points:
- the round trip: what clients on the caller's network measured through the relay (the connected
  pair), else half the time they took to gather a relay candidate from it, else the prober's,
  else UNKNOWN_RTT_POINTS;
- health: a degraded relay pays DEGRADED_POINTS;
- region: a relay outside the caller's region pays OTHER_REGION_POINTS (nothing when the
  caller's region is unknown);
- load: live allocations over the capacity the admin set, times LOAD_POINTS (a full relay is not
  eligible at all);
- the call: the relay the call's other side uses (or was handed first) counts SAME_RELAY_FACTOR
  of its points, one in the same region as theirs PEER_REGION_FACTOR (both sides on one relay,
  else on a near pair);
and is then divided by the admin's weight (2 makes a relay look twice as good).

Among relays whose scores are within NEAR_EQUAL of the best, the pick is by two random choices:
two of them at random, and the less loaded wins (unless the call's other side holds one of them:
then that one). A crowd of callers arriving at once then spreads
over equally good relays instead of all landing on the first. The fallback is the best of the
rest in another region, else another failure domain, else the next best: ICE gets a second path
that doesn't fail with the first.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import operator
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .states import RelayStatus

UNKNOWN_RTT_POINTS = 150.0
RTT_CAP_POINTS = 1000.0
DEGRADED_POINTS = 100.0
OTHER_REGION_POINTS = 80.0
LOAD_POINTS = 100.0
NEAR_EQUAL = 0.15  # within 15 % of the best score (and NEAR_EQUAL_POINTS) counts as equal
NEAR_EQUAL_POINTS = 10.0
GATHER_ROUND_TRIPS = 2.0  # a relay candidate takes an Allocate, its 401 challenge, and again
# The call's other side: the relay they use counts this share of its points (one relay between
# the two, instead of two relays and the path between them), a relay in its region
# PEER_REGION_FACTOR (the nearest pair that regions can tell). Factors, not points taken off:
# the relays' own differences (load, health) still count among them, and nothing goes negative.
SAME_RELAY_FACTOR = 0.4
PEER_REGION_FACTOR = 0.8


@dataclass(frozen=True)
class Candidate:
    """A relay, as selection sees it: what makes it eligible, and what scores it."""

    id: str
    name: str
    enabled: bool = True
    draining: bool = False
    safe: bool = True  # audited and safe, or an admin's override
    has_turn: bool = True  # a STUN-only entry relays nothing
    checked_at: datetime | None = None  # the last probe
    region: str = ""
    failure_domain: str = ""  # "" : a domain of its own
    status: RelayStatus = RelayStatus.UP
    prober_rtt_ms: float | None = None
    client_rtt_ms: float | None = None  # measured by clients on the caller's network
    # How long clients on the caller's network took to gather a relay candidate from it: an
    # authenticated Allocate, about two round trips (used when no pair was measured).
    client_gather_ms: float | None = None
    allocations: int = 0  # live allocations (or unexpired grants, where it doesn't publish)
    load_source: str = "grants"  # "published": coturn's own count (relays.allocations)
    capacity: int | None = None  # None: no limit set
    weight: float = 1.0

    @property
    def domain(self) -> str:
        return self.failure_domain or f"relay:{self.id}"

    @property
    def load(self) -> float | None:
        if not self.capacity:
            return None
        return self.allocations / self.capacity

    @property
    def full(self) -> bool:
        return self.capacity is not None and self.allocations >= self.capacity

    # Made from the fields above, with the candidate (a cached_property took a lock on every
    # first read: about a sixth of a snapshot's build): the points that depend on this relay alone
    # (its round trip, its health and its load; selection scores each relay for many callers,
    # and a relay's load changes by a new candidate, Fleet.issued), and the admin's weight as
    # scores are divided by it (never by less than 0.01).
    own_points: float = field(init=False, repr=False, compare=False)
    divisor: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "own_points", self._own_points())
        object.__setattr__(self, "divisor", self.weight if self.weight > 0.01 else 0.01)

    def _own_points(self) -> float:
        rtt = self.client_rtt_ms
        if rtt is None:
            gather = self.client_gather_ms
            rtt = gather / GATHER_ROUND_TRIPS if gather is not None else self.prober_rtt_ms
        if rtt is None:
            points = UNKNOWN_RTT_POINTS
        elif rtt <= 0.0:
            points = 0.0
        elif rtt >= RTT_CAP_POINTS:
            points = RTT_CAP_POINTS
        else:
            points = rtt
        if self.status == RelayStatus.DEGRADED:
            points += DEGRADED_POINTS
        capacity = self.capacity
        if capacity:
            allocations = self.allocations
            points += (
                LOAD_POINTS if allocations >= capacity else LOAD_POINTS * allocations / capacity
            )
        return points


@dataclass(frozen=True)
class Caller:
    region: str = ""  # "" : unknown
    # The relays the call's other participants use (each one's: the relay it reported using,
    # else the first it was handed), and their regions.
    peer_relays: tuple[str, ...] = ()
    peer_regions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    score: float
    parts: dict[str, float] = field(default_factory=dict)  # what made the score, for "explain"


def value(candidate: Candidate, caller: Caller) -> float:
    """score(candidate, caller).score, without saying what made it (the hot path)."""
    points = candidate.own_points
    region = caller.region
    if region and candidate.region != region:
        points += OTHER_REGION_POINTS
    if caller.peer_relays:
        if candidate.id in caller.peer_relays:
            points *= SAME_RELAY_FACTOR
        elif candidate.region and candidate.region in caller.peer_regions:
            points *= PEER_REGION_FACTOR
    return points / candidate.divisor


def score(candidate: Candidate, caller: Caller) -> Scored:
    parts: dict[str, float] = {}
    rtt, source = candidate.client_rtt_ms, "client"
    if rtt is None and candidate.client_gather_ms is not None:
        rtt, source = candidate.client_gather_ms / GATHER_ROUND_TRIPS, "client gather"
    if rtt is None:
        rtt, source = candidate.prober_rtt_ms, "prober"
    parts[f"rtt ({source})" if rtt is not None else "rtt (unknown)"] = (
        min(max(rtt, 0.0), RTT_CAP_POINTS) if rtt is not None else UNKNOWN_RTT_POINTS
    )
    if candidate.status == RelayStatus.DEGRADED:
        parts["degraded"] = DEGRADED_POINTS
    if caller.region and candidate.region != caller.region:
        parts["other region"] = OTHER_REGION_POINTS
    load = candidate.load
    if load is not None:
        parts["load"] = LOAD_POINTS * min(load, 1.0)
    total = sum(parts.values())
    if candidate.id in caller.peer_relays:
        parts["× the call's other side uses it"] = SAME_RELAY_FACTOR
        total *= SAME_RELAY_FACTOR
    elif caller.peer_relays and candidate.region and candidate.region in caller.peer_regions:
        parts["× near the other side's relay"] = PEER_REGION_FACTOR
        total *= PEER_REGION_FACTOR
    total /= max(candidate.weight, 0.01)
    if candidate.weight != 1.0:
        parts["÷ weight"] = candidate.weight
    return Scored(candidate, total, parts)


def eligible_but_for_time(candidate: Candidate) -> bool:
    """What doesn't change between sweeps: enabled, not draining, up or degraded, safe, able to
    relay (a snapshot keeps the relays that pass; `eligible` adds freshness and capacity)."""
    return (
        candidate.enabled
        and not candidate.draining
        and candidate.status in (RelayStatus.UP, RelayStatus.DEGRADED)
        and candidate.safe
        and candidate.has_turn
    )


def eligible_now(candidate: Candidate, *, now: datetime, stale_after: timedelta) -> bool:
    """Probed recently (not stale) and under capacity."""
    checked = candidate.checked_at
    return checked is not None and now - checked <= stale_after and not candidate.full


def why_not(candidate: Candidate, *, now: datetime, stale_after: timedelta) -> list[str]:
    """Why this relay may not be handed out ([] : it may)."""
    reasons = []
    if not candidate.enabled:
        reasons.append("disabled")
    if candidate.draining:
        reasons.append("draining")
    if candidate.status not in (RelayStatus.UP, RelayStatus.DEGRADED):
        reasons.append(str(candidate.status))
    if candidate.checked_at is None:
        reasons.append("never probed")
    elif now - candidate.checked_at > stale_after:
        reasons.append("stale")
    if not candidate.safe:
        reasons.append("unsafe or not audited yet")
    if not candidate.has_turn:
        reasons.append("no TURN URL")
    if candidate.full:
        reasons.append("at capacity")
    return reasons


def eligible(candidate: Candidate, *, now: datetime, stale_after: timedelta) -> bool:
    """May be handed out: enabled, not draining, up or degraded, probed recently (not stale),
    safe, able to relay, and under capacity (`why_not` says which of these fail)."""
    return eligible_but_for_time(candidate) and eligible_now(
        candidate, now=now, stale_after=stale_after
    )


def rank(candidates: Sequence[Candidate], caller: Caller) -> list[Scored]:
    """Every candidate that isn't full, best first (ties: by name, for a stable order). The
    candidates are eligible ones (see `eligible`)."""
    scored = [score(c, caller) for c in candidates if not c.full]
    scored.sort(key=lambda s: (s.score, s.candidate.name))
    return scored


def _near(best: float, other: float) -> bool:
    return other <= best + max(best * NEAR_EQUAL, NEAR_EQUAL_POINTS)


def _two_choices(pool: list[tuple[float, str, Candidate]], rng: random.Random):
    if len(pool) == 1:
        return pool[0]
    a, b = rng.sample(pool, 2)

    def key(entry):
        points, name, c = entry
        load = c.load
        return (load if load is not None else c.allocations, points, name)

    return min((a, b), key=key)


Ranked = Sequence[tuple[float, str, Candidate]]  # (value, name, candidate), best first
_VALUE = operator.itemgetter(0)
_NAME = operator.itemgetter(1)


def ranked(candidates: Sequence[Candidate], caller: Caller) -> list[tuple[float, str, Candidate]]:
    """Every candidate that isn't full, by `value` for this caller, best first (ties: by name).
    Two stable sorts, by name and then by value, are cheaper than one by both (a tuple made for
    each), and the first costs little on candidates in name order (the snapshot's)."""
    out = [(value(c, caller), c.name, c) for c in candidates if not c.full]
    out.sort(key=_NAME)
    out.sort(key=_VALUE)
    return out


Entry = tuple[float, str, str]  # (value, name, relay id): a ranking as it is kept


@dataclass(frozen=True)
class RegionOrders:
    """Candidates sorted once (a snapshot's, relays.snapshot), so that a caller's ranking is a
    merge, made only as far as choosing reads it. A relay's `value` for a caller depends on the
    caller only through the relay's region: in the caller's region (or for a caller of unknown
    region) it is its own points over its weight, elsewhere OTHER_REGION_POINTS more, and each
    of those times PEER_REGION_FACTOR where the call's other side holds a relay in its region.
    So each region keeps its relays sorted four ways (`by_region`: home, away, and the two near
    the call's other side), and a caller's ranking merges one of them per region, with the
    few relays that the other side holds, or that clients on the caller's network measured,
    scored apart. Full relays are in them: readers skip those as of now
    (relays.selectors.LiveRanking)."""

    by_region: dict[str, tuple[list[Entry], list[Entry], list[Entry], list[Entry]]]
    candidates: dict[str, Candidate]  # as they were sorted

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> RegionOrders:
        """`candidates` in name order (ties in value stay in it, as in `ranked`)."""
        by_region: dict[str, tuple[list[Entry], list[Entry], list[Entry], list[Entry]]] = {}
        for c in candidates:
            lists = by_region.get(c.region)
            if lists is None:
                lists = by_region[c.region] = ([], [], [], [])
            own, away, divisor = c.own_points, c.own_points + OTHER_REGION_POINTS, c.divisor
            # As `value` makes them: points, times a factor, over the weight.
            lists[0].append((own / divisor, c.name, c.id))
            lists[1].append((away / divisor, c.name, c.id))
            lists[2].append((own * PEER_REGION_FACTOR / divisor, c.name, c.id))
            lists[3].append((away * PEER_REGION_FACTOR / divisor, c.name, c.id))
        for lists in by_region.values():
            for entries in lists:
                entries.sort(key=_VALUE)
        return cls(by_region=by_region, candidates={c.id: c for c in candidates})

    def ranking(
        self,
        caller: Caller,
        changed: Sequence[Candidate] = (),
        leave_out: frozenset[str] = frozenset(),
    ) -> Merged:
        """Every candidate by `value` for this caller, best first (as `ranked`, full ones
        included), made as far as it is read, but those in `leave_out`. `changed`: candidates
        to score as given instead (what clients on the caller's network measured); they, and the
        relays the call's other side holds, are scored one by one and merged with the rest."""
        region = caller.region
        near = caller.peer_regions if caller.peer_relays else frozenset()  # as `value`
        apart = {c.id: c for c in changed if c.id in self.candidates}
        for i in caller.peer_relays:
            if i in self.candidates and i not in apart:
                apart[i] = self.candidates[i]
        regions = {self.candidates[i].region for i in apart}
        sources: list[Iterable[Entry]] = []
        for group, lists in self.by_region.items():
            which = (0 if not region or group == region else 1) + (
                2 if group and group in near else 0
            )
            entries = lists[which]
            if group in regions:  # some of them are scored apart, below
                sources.append(e for e in entries if e[2] not in apart)
            else:
                sources.append(entries)
        if apart:
            sources.append(
                sorted(((value(c, caller), c.name, c.id) for c in apart.values()), key=_ORDER)
            )
        return Merged(sources, leave_out)


_ORDER = operator.itemgetter(0, 1)


class Merged:
    """A ranking merged from sorted sources (`RegionOrders.ranking`), made as far as it is read,
    and kept for the next caller who would get the same (readers in several threads: made
    under a lock). `entry(i)` is its i-th (value, name, relay id), None past the end."""

    def __init__(self, sources: list[Iterable[Entry]], leave_out: frozenset[str] = frozenset()):
        made = iter(sources[0]) if len(sources) == 1 else heapq.merge(*sources, key=_ORDER)
        self._made = (e for e in made if e[2] not in leave_out) if leave_out else made
        self.entries: list[Entry] = []
        self._lock = threading.Lock()

    def entry(self, index: int) -> Entry | None:
        entries = self.entries
        if index < len(entries):
            return entries[index]
        with self._lock:
            while index >= len(entries):
                found = next(self._made, None)
                if found is None:
                    return None
                entries.append(found)
        return entries[index]


def choose(
    candidates: Sequence[Candidate],
    caller: Caller,
    *,
    limit: int = 2,
    rng: random.Random | None = None,
) -> list[Scored]:
    """The relays to hand this caller: the best (by two random choices among near-equals), then
    a fallback in another region or failure domain where one exists, then the next best, up to
    `limit`. Only the chosen ones are scored in full (with what made their score)."""
    return choose_ranked(ranked(candidates, caller), caller, limit=limit, rng=rng)


def choose_ranked(
    ranking: Ranked, caller: Caller, *, limit: int = 2, rng: random.Random | None = None
) -> list[Scored]:
    """`choose`, from a ranking made earlier (`ranked`): the two random choices compare the
    candidates' loads as given here, which may be newer than the ranking's values."""
    if not ranking or limit <= 0:
        return []
    rng = rng or random.Random()
    best = ranking[0][0]
    near = best + max(best * NEAR_EQUAL, NEAR_EQUAL_POINTS)  # as _near
    pool = list(itertools.takewhile(lambda entry: entry[0] <= near, ranking))
    # A relay the call's other side holds is taken as it is among the best: two random choices
    # spread a crowd of strangers; two sides of one call should meet.
    theirs = [entry for entry in pool if entry[2].id in caller.peer_relays]
    theirs.sort(key=lambda entry: (entry[0], caller.peer_relays.index(entry[2].id)))
    first = theirs[0] if theirs else _two_choices(pool, rng)
    chosen = [first]
    lead = first[2]
    for differs in (
        lambda c: c.region != lead.region,
        lambda c: c.domain != lead.domain,
        lambda c: True,
    ):
        if len(chosen) >= limit:
            break
        # The best of the rest that differs (the ranking is long: it is walked, not copied).
        pick = next((e for e in ranking if differs(e[2]) and all(e is not c for c in chosen)), None)
        if pick is not None:
            chosen.append(pick)
    for entry in ranking:  # then the next best, up to the limit
        if len(chosen) >= limit:
            break
        if all(entry is not c for c in chosen):
            chosen.append(entry)
    return [score(entry[2], caller) for entry in chosen]


def network_key(*, ip: str | None, region: str = "") -> str:
    """Whose measurements a caller shares: its declared region, else its /24 (IPv4) or /48
    (IPv6), else "" (none)."""
    if region:
        return f"region:{region[:56]}"
    if not ip:
        return ""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def decayed_weight(weight: float, *, age: timedelta, half_life: timedelta) -> float:
    """A weight `age` later: it halves every `half_life`."""
    if age.total_seconds() <= 0:
        return weight
    return weight * 0.5 ** (age / half_life)


def blend(mean: float, weight: float, sample: float) -> tuple[float, float]:
    """A new sample into a weighted mean: (mean, weight) after it."""
    total = weight + 1.0
    return (mean * weight + sample) / total, total
