"""Selection properties (relays/scoring.py): whatever the fleet, a caller is never handed a relay
that is down, draining, unsafe, stale or full; the fallback is in another region (or failure
domain) when one exists; a crowd spreads over equally good relays."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relays.scoring import Caller, Candidate, choose, eligible, rank, score
from relays.states import RelayStatus

pytestmark = pytest.mark.smoke

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STALE = timedelta(seconds=45)

candidates = st.builds(
    Candidate,
    id=st.uuids().map(str),
    name=st.text("abcdefgh", min_size=1, max_size=6),
    enabled=st.booleans(),
    draining=st.booleans(),
    safe=st.booleans(),
    has_turn=st.booleans(),
    checked_at=st.none() | st.integers(0, 90).map(lambda s: NOW - timedelta(seconds=s)),
    region=st.sampled_from(["", "eu", "us", "ap"]),
    failure_domain=st.sampled_from(["", "dc1", "dc2"]),
    status=st.sampled_from(list(RelayStatus)),
    prober_rtt_ms=st.none() | st.floats(0, 2000),
    client_rtt_ms=st.none() | st.floats(0, 2000),
    client_gather_ms=st.none() | st.floats(0, 4000),
    allocations=st.integers(0, 60),
    capacity=st.none() | st.integers(1, 50),
    weight=st.floats(0.1, 5),
)
fleets = st.lists(candidates, max_size=12, unique_by=lambda c: c.id)
callers = st.builds(Caller, region=st.sampled_from(["", "eu", "us", "ap"]))


def select(fleet, caller, limit, seed):
    ok = [c for c in fleet if eligible(c, now=NOW, stale_after=STALE)]
    return ok, choose(ok, caller, limit=limit, rng=random.Random(seed))


@settings(max_examples=500, deadline=None)
@given(fleets, callers, st.integers(1, 4), st.integers())
def test_never_down_draining_unsafe_stale_or_full(fleet, caller, limit, seed):
    ok, chosen = select(fleet, caller, limit, seed)
    for s in chosen:
        c = s.candidate
        assert c.status in (RelayStatus.UP, RelayStatus.DEGRADED)
        assert c.enabled and not c.draining and c.safe and c.has_turn
        assert c.checked_at is not None and NOW - c.checked_at <= STALE
        assert not c.full
    assert len({s.candidate.id for s in chosen}) == len(chosen) == min(limit, len(ok))


@settings(max_examples=500, deadline=None)
@given(fleets, callers, st.integers())
def test_the_fallback_is_elsewhere_when_elsewhere_exists(fleet, caller, seed):
    ok, chosen = select(fleet, caller, 2, seed)
    if len(chosen) < 2:
        return
    first, second = (s.candidate for s in chosen)
    if any(c.region != first.region for c in ok):
        assert second.region != first.region
    elif any(c.domain != first.domain for c in ok):
        assert second.domain != first.domain


@settings(max_examples=300, deadline=None)
@given(fleets, callers, st.integers())
def test_the_first_is_among_the_best(fleet, caller, seed):
    ok, chosen = select(fleet, caller, 1, seed)
    if not chosen:
        return
    best = rank(ok, caller)[0].score
    assert chosen[0].score <= best + max(best * 0.15, 10.0) + 1e-9


def test_a_crowd_spreads_over_equally_good_relays():
    """1,000 callers arrive at once on 5 equally good relays; each assignment adds to its
    relay's load. Two random choices keep every relay near its fifth."""
    fleet = {
        f"r{i}": Candidate(id=f"r{i}", name=f"r{i}", region="eu", prober_rtt_ms=5, capacity=2000)
        for i in range(5)
    }
    rng = random.Random(7)
    counts: Counter[str] = Counter()
    for _ in range(1000):
        (best,) = choose(list(fleet.values()), Caller("eu"), limit=1, rng=rng)
        counts[best.candidate.id] += 1
        c = fleet[best.candidate.id]
        fleet[c.id] = replace(c, allocations=c.allocations + 1)
    assert max(counts.values()) <= 200 * 1.1, counts
    assert min(counts.values()) >= 200 * 0.9, counts


def test_without_load_figures_a_crowd_still_spreads_by_count():
    fleet = [Candidate(id=f"r{i}", name=f"r{i}", prober_rtt_ms=5) for i in range(4)]
    counts: Counter[str] = Counter()
    rng = random.Random(3)
    for _ in range(400):
        (best,) = choose(fleet, Caller(), limit=1, rng=rng)
        counts[best.candidate.id] += 1
        fleet = [replace(c, allocations=counts[c.id]) for c in fleet]
    assert max(counts.values()) <= 110, counts


def test_what_a_score_is_made_of():
    caller = Caller("eu")
    near = Candidate(id="a", name="a", region="eu", prober_rtt_ms=20)
    assert score(near, caller).score == 20
    far = replace(near, region="us")
    assert score(far, caller).score == 20 + 80
    measured = replace(near, client_rtt_ms=7)  # what clients on this network saw wins
    assert score(measured, caller).parts == {"rtt (client)": 7}
    degraded = replace(near, status=RelayStatus.DEGRADED)
    assert score(degraded, caller).score == 120
    half_full = replace(near, allocations=5, capacity=10)
    assert score(half_full, caller).score == 70
    weighted = replace(near, weight=2.0)
    assert score(weighted, caller).score == 10
    unknown = Candidate(id="u", name="u")
    assert score(unknown, Caller()).parts == {"rtt (unknown)": 150}


def test_a_nearer_relay_wins_and_the_fallback_is_the_other_region():
    caller = Caller("eu")
    fleet = [
        Candidate(id="eu1", name="eu1", region="eu", prober_rtt_ms=30),
        Candidate(id="eu2", name="eu2", region="eu", prober_rtt_ms=200),
        Candidate(id="us1", name="us1", region="us", prober_rtt_ms=90),
    ]
    chosen = [s.candidate.id for s in choose(fleet, caller, limit=2, rng=random.Random(1))]
    assert chosen == ["eu1", "us1"]


def test_network_keys_decay_and_blending():
    from relays.scoring import blend, decayed_weight, network_key

    assert network_key(ip="198.51.100.77") == "198.51.100.0/24"
    assert network_key(ip="2001:db8:1:2::5") == "2001:db8:1::/48"
    assert network_key(ip="198.51.100.77", region="eu") == "region:eu"
    assert network_key(ip=None) == network_key(ip="garbage") == ""
    hour = timedelta(hours=1)
    assert decayed_weight(4.0, age=hour, half_life=hour) == 2.0
    assert decayed_weight(4.0, age=3 * hour, half_life=hour) == 0.5
    assert decayed_weight(4.0, age=-hour, half_life=hour) == 4.0  # a clock step back: as is
    assert blend(100.0, 1.0, 40.0) == (70.0, 2.0)


@settings(max_examples=500, deadline=None)
@given(candidates, callers)
def test_the_fast_paths_agree_with_the_explained_ones(c, caller):
    """Selection scores with `value` and judges with `eligible`; the explain page shows `score`
    and `why_not`. The two pairs say the same thing."""
    from relays.scoring import value, why_not

    assert value(c, caller) == pytest.approx(score(c, caller).score)
    assert eligible(c, now=NOW, stale_after=STALE) == (not why_not(c, now=NOW, stale_after=STALE))


@settings(max_examples=500, deadline=None)
@given(
    candidates,
    callers,
    st.booleans(),
    st.frozensets(st.sampled_from(["eu", "us", "ap"]), max_size=2),
)
def test_the_fast_path_agrees_with_the_explained_one_with_a_call_in_mind(
    c, caller, theirs, peer_regions
):
    from relays.scoring import value

    peer = Caller(
        region=caller.region,
        peer_relays=(c.id,) if theirs else ("another-relay",),
        peer_regions=peer_regions,
    )
    assert value(c, peer) == pytest.approx(score(c, peer).score)
    assert value(c, peer) <= value(c, caller) + 1e-9  # the call only ever helps a relay


def test_both_sides_of_a_call_share_a_relay_or_get_a_near_pair():
    """The callee, in another region than the caller, gets the caller's relay while it is close
    enough, else the relay in the caller's relay's region over one farther away."""
    eu1 = Candidate(id="eu1", name="eu1", region="eu", prober_rtt_ms=30.0)
    eu2 = Candidate(id="eu2", name="eu2", region="eu", prober_rtt_ms=35.0)
    us1 = Candidate(id="us1", name="us1", region="us", prober_rtt_ms=20.0)
    ap1 = Candidate(id="ap1", name="ap1", region="ap", prober_rtt_ms=36.0)
    alone = Caller(region="us")
    assert choose([eu1, eu2, us1], alone, limit=1)[0].candidate.id == "us1"
    # The caller holds eu1: eu1 costs (30 + 80 for another region) × 0.4 = 44, us1 20: us1 wins.
    with_peer = Caller(region="us", peer_relays=("eu1",), peer_regions=frozenset({"eu"}))
    assert choose([eu1, eu2, us1], with_peer, limit=1)[0].candidate.id == "us1"
    # Same region as the caller's relay: the caller's own relay wins over a faster local one.
    with_peer_eu = Caller(region="eu", peer_relays=("eu1",), peer_regions=frozenset({"eu"}))
    assert choose([eu1, eu2], with_peer_eu, limit=1)[0].candidate.id == "eu1"
    faster = Candidate(id="eu3", name="eu3", region="eu", prober_rtt_ms=20.0)
    assert choose([eu1, faster], with_peer_eu, limit=1)[0].candidate.id == "eu1"  # 12 < 20
    # A much nearer one still wins: 30 × 0.4 = 12 is more than NEAR_EQUAL_POINTS (10) above 1.
    nearest = Candidate(id="eu4", name="eu4", region="eu", prober_rtt_ms=1.0)
    assert choose([eu1, nearest], with_peer_eu, limit=1)[0].candidate.id == "eu4"
    # Unknown caller region, the peer's relay full: the one nearest it (its region) is next.
    unknown = Caller(peer_relays=("gone",), peer_regions=frozenset({"ap"}))
    assert choose([ap1, eu2], unknown, limit=1)[0].candidate.id == "ap1"  # 36 × 0.8 < 35
    assert choose([ap1, eu2], Caller(), limit=1)[0].candidate.id == "eu2"
    explained = score(eu1, with_peer_eu)
    assert explained.parts["× the call's other side uses it"] == 0.4
    assert explained.score == pytest.approx(12.0)
    # Two relays the other side uses: their own differences (load here) still decide.
    both = Caller(region="eu", peer_relays=("eu1", "eu2"), peer_regions=frozenset({"eu"}))
    loaded = Candidate(
        id="eu1", name="eu1", region="eu", prober_rtt_ms=1.0, allocations=8, capacity=10
    )
    idle = Candidate(id="eu2", name="eu2", region="eu", prober_rtt_ms=1.0, capacity=10)
    assert choose([loaded, idle], both, limit=1)[0].candidate.id == "eu2"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(candidates, min_size=1, max_size=12, unique_by=lambda c: c.id),
    callers,
    st.sets(st.integers(0, 11)),
    st.integers(1, 4),
    st.integers(),
)
def test_a_kept_ranking_read_lazily_chooses_as_the_whole_list_would(
    fleet, caller, filled, limit, seed
):
    """A kept ranking (relay ids) is read against the relays as they are now (some filled since
    it was made) only as far as choosing goes (relays.selectors.LiveRanking): what it chooses,
    and what it holds, is what the list with full relays taken out gives."""
    from relays.scoring import choose_ranked, ranked
    from relays.selectors import LiveRanking

    fleet = [replace(c, capacity=None) for c in fleet]  # none full when it was ranked
    kept = [(v, name, c.id) for v, name, c in ranked(fleet, caller)]
    now = {
        c.id: replace(c, capacity=1, allocations=1) if i in filled else c
        for i, c in enumerate(fleet)
    }
    eager = [(v, name, now[i]) for v, name, i in kept if not now[i].full]

    live = LiveRanking(kept, now)
    assert [
        s.candidate.id for s in choose_ranked(live, caller, limit=limit, rng=random.Random(seed))
    ] == [
        s.candidate.id for s in choose_ranked(eager, caller, limit=limit, rng=random.Random(seed))
    ]
    assert bool(live) == bool(eager) and list(live) == eager and len(live) == len(eager)
    if eager:
        assert live[0] == eager[0] and live[len(eager) - 1] == eager[-1] and live[-1] == eager[-1]
    with pytest.raises(IndexError):
        live[len(eager)]


def test_choosing_from_a_kept_ranking_reads_only_the_top_of_it():
    """1,000 relays in two regions, ranked for one: the best, and a fallback in the other region,
    are found without reading the whole ranking."""
    from relays.scoring import choose_ranked, ranked
    from relays.selectors import LiveRanking

    fleet = [
        Candidate(
            id=f"r{i}",
            name=f"r{i:04d}",
            region="eu" if i % 2 else "us",
            checked_at=NOW,
            prober_rtt_ms=5 + i / 10,
        )
        for i in range(1000)
    ]
    caller = Caller(region="eu")
    kept = [(v, name, c.id) for v, name, c in ranked(fleet, caller)]
    live = LiveRanking(kept, {c.id: c for c in fleet})
    chosen = choose_ranked(live, caller, limit=2, rng=random.Random(1))
    assert [s.candidate.region for s in chosen] == ["eu", "us"]
    assert live._read < 600, live._read  # the eu relays rank first; the first us one ends it


@settings(max_examples=500, deadline=None)
@given(
    st.lists(candidates, max_size=14, unique_by=lambda c: c.name),
    st.sampled_from(["", "eu", "us", "ap", "elsewhere"]),
    st.lists(st.integers(0, 15), max_size=3),
    st.sets(st.sampled_from(["eu", "us", "ap", "elsewhere"]), max_size=2),
    st.dictionaries(st.integers(0, 15), st.none() | st.floats(0, 2000), max_size=5),
)
def test_a_merged_ranking_is_the_full_ranking(fleet, region, held, near, measured):
    """The snapshot sorts its relays once (RegionOrders); a caller's ranking, a merge of those
    read as far as it goes, holds exactly what ranking them all for that caller gives: the same
    relays, values and order, with or without a call whose other side holds relays (some of
    them perhaps not in the fleet) in some regions, and with what clients on the caller's
    network measured of some relays."""
    from relays.scoring import RegionOrders, ranked
    from relays.selectors import LiveRanking

    fleet = sorted(fleet, key=lambda c: c.name)  # as the snapshot keeps them
    peers = tuple(fleet[i].id if i < len(fleet) else f"gone-{i}" for i in held)
    caller = Caller(region=region, peer_relays=peers, peer_regions=frozenset(near))
    changed = [replace(fleet[i], client_rtt_ms=ms) for i, ms in measured.items() if i < len(fleet)]
    now = {c.id: c for c in fleet} | {c.id: c for c in changed}
    live = LiveRanking(RegionOrders.of(fleet).ranking(caller, changed), now)
    assert [(v, n, c.id) for v, n, c in live] == [
        (v, n, c.id) for v, n, c in ranked([now[c.id] for c in fleet], caller)
    ]


@pytest.mark.parametrize("in_a_call", [False, True])
def test_a_merged_ranking_is_made_only_as_far_as_choosing_reads(in_a_call):
    """1,000 relays in four regions: the first caller of a region (no ranking kept yet), or
    one joining a call, gets the best and a fallback elsewhere with a few dozen entries made,
    not a thousand."""
    from relays.scoring import Merged, RegionOrders, choose_ranked, ranked
    from relays.selectors import LiveRanking

    rng = random.Random(3)
    fleet = [
        Candidate(
            id=f"r{i}",
            name=f"r{i:04d}",
            region=["eu", "us", "ap", ""][i % 4],
            checked_at=NOW,
            prober_rtt_ms=rng.uniform(2, 250),
            capacity=rng.choice([None, 100]),
            allocations=rng.randrange(0, 120),
        )
        for i in range(1000)
    ]
    caller = (
        Caller(region="us", peer_relays=("r5", "r6"), peer_regions=frozenset({"us", "eu"}))
        if in_a_call
        else Caller(region="us")
    )
    merged = RegionOrders.of(fleet).ranking(caller)
    assert isinstance(merged, Merged)
    chosen = choose_ranked(
        LiveRanking(merged, {c.id: c for c in fleet}), caller, limit=2, rng=random.Random(1)
    )
    assert len(chosen) == 2 and chosen[0].candidate.region != chosen[1].candidate.region
    assert len(merged.entries) < 100, len(merged.entries)
    best = [c.id for _, _, c in ranked(fleet, caller)][: len(merged.entries)]
    assert [relay_id for _, _, relay_id in merged.entries] == best


def test_a_merge_read_by_many_threads_at_once_is_made_once_and_in_order():
    """Callers of one region in several request threads read the kept merge together: each
    entry is made once, in order, whatever the interleaving."""
    import threading

    from relays.scoring import RegionOrders, ranked

    fleet = [
        Candidate(id=f"r{i}", name=f"r{i:04d}", region=["eu", "us"][i % 2], prober_rtt_ms=i % 97)
        for i in range(2000)
    ]
    merged = RegionOrders.of(fleet).ranking(Caller(region="eu"))
    start = threading.Barrier(8)
    seen: list[tuple[int, list]] = []

    def reader(step: int) -> None:
        start.wait()
        seen.append((step, [merged.entry(i) for i in range(0, 2000, step)]))

    threads = [threading.Thread(target=reader, args=(1 + n % 3,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [(v, n, c.id) for v, n, c in ranked(fleet, Caller(region="eu"))]
    assert merged.entries == expected
    assert merged.entry(2000) is None
    assert len(seen) == 8
    for step, got in seen:
        assert got == expected[::step]
