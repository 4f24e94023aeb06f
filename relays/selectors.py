"""Reads of the relay registry: which relays may be handed out right now, and their history."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import F, Max, Q, Sum
from django.utils import timezone

from .ice_urls import IceUrlError, parse_ice_url
from .models import (
    ClientRelayRtt,
    CredentialGrant,
    GrantTraffic,
    NetworkTestResult,
    ProbeResult,
    Relay,
)
from .scoring import (
    Caller,
    Candidate,
    Merged,
    Ranked,
    choose,
    choose_ranked,
    decayed_weight,
    eligible,
    eligible_now,
    network_key,
    rank,
    why_not,
)
from .snapshot import Fleet, fleet
from .snapshot import build as build_fleet
from .states import stale_after

NEVER = datetime.max.replace(tzinfo=UTC)


def caller_region(
    *, declared: str = "", ip: str | None = None, current: Fleet | None = None
) -> str:
    """The caller's region: what the client declared, else the admin's table of address ranges
    (the longest matching prefix), else DEFAULT_REGION ("" : unknown)."""
    declared = (declared or "").strip()[:64]
    if declared:
        return declared
    if ip:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            address = None
        if address is not None:
            region = (current or fleet()).region_of(address)
            if region is not None:
                return region
    return settings.DEFAULT_REGION


def client_rtt_half_life() -> timedelta:
    return timedelta(hours=settings.CLIENT_RTT_HALF_LIFE_HOURS)


Measured = dict[str, tuple[float | None, float | None]]


def client_rtts_for(*, network: str, now=None) -> Measured:
    """relay id -> (the selected pair's round trip, the time to gather a relay candidate) that
    clients on `network` measured, each where it still weighs enough (else None)."""
    if not network:
        return {}
    now = now or timezone.now()
    out: Measured = {}
    for relay_id, kind, ms, weight, updated_at in ClientRelayRtt.objects.filter(
        network=network
    ).values_list("relay_id", "kind", "rtt_ms", "weight", "updated_at"):
        if decayed_weight(weight, age=now - updated_at, half_life=client_rtt_half_life()) < (
            settings.CLIENT_RTT_MIN_WEIGHT
        ):
            continue
        pair, gather = out.get(str(relay_id), (None, None))
        if kind == ClientRelayRtt.Kind.GATHER:
            gather = ms
        else:
            pair = ms
        out[str(relay_id)] = (pair, gather)
    return out


def _measured(c: Candidate, measured: Measured) -> Candidate:
    found = measured.get(c.id)
    if found is None:
        return c
    return replace(c, client_rtt_ms=found[0], client_gather_ms=found[1])


def relay_candidates(*, now=None, network: str = "") -> list[Candidate]:
    """Every enabled relay as selection sees it (relays.scoring), read afresh (staff pages:
    selection itself reads the process's snapshot), with what clients on `network` measured."""
    measured = client_rtts_for(network=network, now=now)
    return [_measured(c, measured) for c in build_fleet().candidates.values()]


def _caller(region: str, peers: Sequence[str], current: Fleet) -> Caller:
    """A caller in `region` whose call's other side holds `peers` (relay ids)."""
    held = tuple(dict.fromkeys(str(p) for p in peers))
    regions = frozenset(
        c.region for p in held if (c := current.candidates.get(p)) is not None and c.region
    )
    return Caller(region=region, peer_relays=held, peer_regions=regions)


def select_relays_for(
    *,
    user,
    region: str = "",
    ip: str | None = None,
    limit: int | None = None,
    keep: Sequence[str] = (),
    peers: Sequence[str] = (),
) -> list[Relay]:
    """The relays to hand this caller (relays.scoring): eligible ones only, scored by health,
    region, RTT, load and the admin's weight; the best (two random choices among near-equals)
    and a fallback in another region or failure domain. Relays in `keep` (ids: what the device
    has now) stay while they are eligible, so a refresh doesn't move a call's relay. `peers`
    (ids: what the call's other side holds) count for the relays they name and those near them."""
    limit = limit or settings.RELAYS_PER_CALLER
    now = timezone.now()
    current = fleet()
    caller = _caller(caller_region(declared=region, ip=ip, current=current), peers, current)
    network = network_key(ip=ip, region=region)
    measured = current.client_rtts(
        network, lambda network: client_rtts_for(network=network, now=now)
    )
    kept: list[str] = []
    if keep:  # those the ranking holds: assignable, fresh and not full
        fresh = stale_after(settings.RELAY_SWEEP_INTERVAL)
        kept = [
            i
            for i in dict.fromkeys(str(k) for k in keep)
            if i in current.assignable_ids
            and eligible_now(current.candidates[i], now=now, stale_after=fresh)
        ][:limit]
    ranking = _ranking(
        current,
        caller,
        network=network if measured else "",
        measured=measured,
        now=now,
        skip=frozenset(kept),
    )
    chosen = kept + [
        s.candidate.id for s in choose_ranked(ranking, caller, limit=limit - len(kept))
    ]
    current.issued(chosen)
    return [current.relay(i) for i in chosen]


def _ranking(
    current: Fleet,
    caller: Caller,
    *,
    network: str,
    measured: Measured,
    now: datetime,
    skip: frozenset[str] = frozenset(),
) -> Ranked:
    """The snapshot's eligible relays ranked for this caller (as relays.scoring.ranked would).

    A ranking is a merge of the relays the snapshot sorted once (relays.scoring.RegionOrders),
    made only as far as it is read: choosing reads the first few dozen of a thousand. Relays
    whose last probe is stale now (or that were never probed) are left out: the snapshot keeps
    its relays in the order of their last probe, so those are found by bisection. The snapshot
    keeps each ranking for the callers that would get the same one (the same region; the same
    network where clients on it measured relays, `network` being "" where none did), until the
    next of its relays goes stale; a caller whose call's other side holds relays gets one of
    their own. A ranking's values are as of the snapshot; capacity (a full relay is left out)
    and the loads that the two random choices compare are as of now (Fleet.issued). Relays in
    `skip` are left out (a refresh's: already chosen)."""
    candidates = current.candidates
    key = None if caller.peer_relays else (caller.region, network)
    if key is not None:
        kept = current.ranking(key, now)
        if kept is not None:
            return LiveRanking(kept, candidates, skip)
    # Relays stale now (or never probed) are left out; the ranking is kept until the next one
    # goes stale.
    stale, until = current.stale(now, stale_after(settings.RELAY_SWEEP_INTERVAL))
    orders = current.orders
    changed = current.measured_candidates.get(network) if network else []
    if changed is None:  # made once per snapshot and network
        changed = current.measured_candidates[network] = [
            _measured(orders.candidates[i], measured) for i in measured if i in orders.candidates
        ]
    merged = orders.ranking(caller, changed, leave_out=stale)
    if key is not None:
        current.keep_ranking(key, merged, until or NEVER)
    return LiveRanking(merged, candidates, skip)


class LiveRanking(Sequence):
    """A kept ranking (value, name, relay id) read as (value, name, candidate as of now), full
    relays left out, made as far down as it is read: choosing reads the first few dozen of a
    thousand. Relays in `skip` are left out too."""

    def __init__(
        self,
        kept: Merged | list[tuple[float, str, str]],
        candidates: dict[str, Candidate],
        skip: frozenset[str] = frozenset(),
    ):
        self._kept = Merged([kept]) if isinstance(kept, list) else kept
        self._candidates = candidates
        self._skip = skip
        self._made: list[tuple[float, str, Candidate]] = []
        self._read = 0  # entries of `kept` looked at

    def _more(self) -> bool:
        """Make one more entry; False when the kept ranking is used up."""
        entry, candidates = self._kept.entry, self._candidates
        while (found := entry(self._read)) is not None:
            v, name, relay_id = found
            self._read += 1
            c = candidates[relay_id]
            if not c.full and relay_id not in self._skip:
                self._made.append((v, name, c))
                return True
        return False

    def __iter__(self):
        i = 0
        while i < len(self._made) or self._more():
            yield self._made[i]
            i += 1

    def __getitem__(self, index):
        if isinstance(index, slice) or index < 0:
            return list(self)[index]
        while index >= len(self._made):
            if not self._more():
                raise IndexError(index)
        return self._made[index]

    def __len__(self) -> int:
        while self._more():
            pass
        return len(self._made)

    def __bool__(self) -> bool:
        return bool(self._made) or self._more()


def explain_selection(
    *, region: str = "", ip: str | None = None, peers: Sequence[str] = ()
) -> dict:
    """How every relay scores for a sample caller (staff only: the admin page and the API):
    the caller's region and where it came from, each relay's score and what made it, or why it
    may not be handed out, and which relays such a caller would get. `peers`: the relays a
    call's participants hold, for a caller joining that call."""
    now = timezone.now()
    declared = (region or "").strip()[:64]
    resolved = caller_region(declared=declared, ip=ip)
    if declared:
        source = "the client's declaration"
    elif resolved and resolved != settings.DEFAULT_REGION:
        source = "the admin's address ranges"
    elif resolved:
        source = "DEFAULT_REGION"
    else:  # region plays no part in the scores
        source = "none: no declaration, no address range matched, DEFAULT_REGION unset"
    fresh = stale_after(settings.RELAY_SWEEP_INTERVAL)
    network = network_key(ip=ip, region=declared)
    candidates = relay_candidates(now=now, network=network)
    by_id = {c.id: c for c in candidates}
    held = tuple(dict.fromkeys(str(p) for p in peers))
    caller = Caller(
        region=resolved,
        peer_relays=held,
        peer_regions=frozenset(by_id[p].region for p in held if p in by_id and by_id[p].region),
    )
    ok = [c for c in candidates if eligible(c, now=now, stale_after=fresh)]
    ranked = {s.candidate.id: s for s in rank(ok, caller)}
    chosen = [s.candidate.id for s in choose(ok, caller, limit=settings.RELAYS_PER_CALLER)]
    rows = []
    for c in candidates:
        s = ranked.get(c.id)
        rows.append(
            {
                "id": c.id,
                "name": c.name,
                "region": c.region,
                "status": str(c.status),
                "eligible": s is not None,
                "not_eligible_because": why_not(c, now=now, stale_after=fresh),
                "score": round(s.score, 2) if s else None,
                "parts": {k: round(v, 2) for k, v in s.parts.items()} if s else {},
                "load": (f"{c.allocations}/{c.capacity}" if c.capacity else str(c.allocations))
                + (" allocations" if c.load_source == "published" else " grants"),
                "chosen": chosen.index(c.id) + 1 if c.id in chosen else None,
            }
        )
    rows.sort(key=lambda r: (r["score"] is None, r["score"] or 0, r["name"]))
    return {
        "caller": {
            "ip": ip,
            "region": resolved,
            "region_from": source,
            "network": network,
            "call_relays": [by_id[p].name for p in held if p in by_id],
        },
        "relays": rows,
        "chosen": [next(r["name"] for r in rows if r["id"] == i) for i in chosen],
    }


def stun_fallback_urls() -> list[str]:
    """STUN for when no relay can be handed out: the STUN of relays whose STUN probe passes
    (fresh, enabled, not flagged unsafe), else FALLBACK_STUN_URLS."""
    now = timezone.now()
    urls: list[str] = []
    rows = (
        Relay.objects.filter(
            enabled=True, last_checked_at__gte=now - stale_after(settings.RELAY_SWEEP_INTERVAL)
        )
        # STUN can't reach a peer for anyone, so the audit needn't have run (it can't, on a
        # relay whose TURN refuses us); a relay flagged unsafe is still left out.
        .filter(Q(unsafe=False) | Q(unsafe_override=True))
        .order_by(F("last_rtt_ms").asc(nulls_last=True), "name")
        .values_list("urls", "transport_status")
    )
    for relay_urls, transports in rows:
        if (transports or {}).get("stun") != "up":
            continue
        for text in relay_urls:
            try:
                stun = parse_ice_url(text).stun_url  # where the probe's Binding went
            except IceUrlError:
                continue
            if stun is not None and stun not in urls:
                urls.append(stun)
    return urls or list(settings.FALLBACK_STUN_URLS)


def relay_given_to(*, user_id: int, url: str, expiring_after=None) -> Relay | None:
    """The relay with this URL that this user was handed (by a grant expiring after
    `expiring_after`, when given), None when none: a client can't name another's relay."""
    granted = Relay.objects.filter(grants__user_id=user_id)
    if expiring_after is not None:
        granted = granted.filter(grants__expires_at__gt=expiring_after)
    return next((r for r in granted.distinct() if url in r.urls), None)


def relay_live_grants(*, relay: Relay, now=None) -> int:
    """Credential grants for this relay that have not expired: its load, until live allocation
    counts come in."""
    return relay.grants.filter(expires_at__gt=now or timezone.now()).count()


def relay_load(*, relay: Relay, now=None) -> tuple[int, str]:
    """(allocations, source): what the relay published ("published"), or, where it doesn't
    publish, its unexpired grants ("grants"), as selection counts it (relays.snapshot)."""
    if relay.publishes_stats(now):
        return relay.live_allocations, "published"
    return relay_live_grants(relay=relay, now=now), "grants"


def relay_traffic_since(*, relay: Relay, hours: float = 24, now=None) -> int:
    """Bytes callers moved through this relay (both ways, the client's side) in grants active
    over the last `hours`, as its coturn published them."""
    since = (now or timezone.now()) - timedelta(hours=hours)
    total = GrantTraffic.objects.filter(relay=relay, last_at__gte=since).aggregate(
        b=Sum(F("received_bytes") + F("sent_bytes"))
    )["b"]
    return int(total or 0)


def relay_latest_grant_expiry(*, relay: Relay):
    """When the last credential issued for this relay expires (None when none was issued)."""
    return CredentialGrant.objects.filter(relays=relay).aggregate(m=Max("expires_at"))["m"]


def relay_probe_history(*, relay: Relay, hours: float = 6) -> list[ProbeResult]:
    since = timezone.now() - timedelta(hours=hours)
    return list(
        ProbeResult.objects.filter(relay=relay, checked_at__gte=since)
        .only("checked_at", "ok", "observation", "rtt_ms", "loss", "jitter_ms")
        .order_by("checked_at")
    )


def network_type_seen(*, user_id, network: str, now=None) -> str:
    """The NAT type `user_id`'s latest network test found on `network` (a /24 or /48) within
    NETWORK_TEST_RETENTION_DAYS, or "" when they never tested there."""
    if not network or network.startswith("region:"):
        return ""
    now = now or timezone.now()
    return (
        NetworkTestResult.objects.filter(
            user_id=user_id,
            network=network,
            created_at__gte=now - timedelta(days=settings.NETWORK_TEST_RETENTION_DAYS),
        )
        .order_by("-created_at")
        .values_list("network_type", flat=True)
        .first()
        or ""
    )
