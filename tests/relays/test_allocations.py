"""Counting what coturn publishes (relays/allocations.py), with no coturn, Redis or database:
the message shapes are the ones coturn 4.6.1 published in tests/relays/test_relay_stats.py."""

import pytest

from relays.allocations import (
    AllocationBook,
    EventKind,
    opaque_id,
    parse_event,
    probe_opaque_id,
)

pytestmark = pytest.mark.smoke

RELAY = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
USER = f"1795708652:{opaque_id(grant='g_abc', relay_key=RELAY)}"
BASE = f"turn/realm/test.traverse/user/{USER}/allocation/000000000000000001"
NEW = "new lifetime=600, type=UDP, local=127.0.0.1:13478, remote=127.0.0.1:59534, ssl=NONE"


def ev(suffix: str, data: str, base: str = BASE):
    event = parse_event(f"{base}/{suffix}", data)
    assert event is not None
    return event


def test_a_status_names_its_grant_relay_lifetime_and_expiry():
    e = ev("status", NEW)
    assert (e.kind, e.grant, e.relay_key, e.lifetime, e.expires_at) == (
        EventKind.NEW,
        "g_abc",
        RELAY,
        600,
        1795708652,
    )
    assert ev("status", "refreshed lifetime=600, type=UDP").kind == EventKind.REFRESHED
    assert ev("status", "deleted").kind == EventKind.DELETED
    # A refresh with lifetime 0 is the client letting go.
    assert ev("status", "refreshed lifetime=0, type=UDP").kind == EventKind.DELETED


def test_traffic_counts_the_clients_side():
    e = ev("traffic", "rcvp=74, rcvb=60732, sentp=4, sentb=284")
    assert (e.kind, e.received, e.sent) == (EventKind.TRAFFIC, 60732, 284)
    assert ev("total_traffic", "rcvp=1, rcvb=2, sentp=3, sentb=4").kind == EventKind.TOTAL


@pytest.mark.parametrize(
    "channel,data",
    [
        (f"{BASE}/traffic/peer", "rcvp=0, rcvb=0, sentp=70, sentb=60000"),  # wraps: left out
        (f"{BASE}/total_traffic/peer", "rcvp=0, rcvb=0, sentp=70, sentb=60000"),
        ("turn/realm/r/user/1795708652:someone-else/allocation/1/status", NEW),  # not ours
        (f"turn/realm/r/user/1795708652:g_abc.{RELAY[:-1]}/allocation/1/status", NEW),
        (f"{BASE}/status", "exploded"),
        (f"{BASE}/traffic", "garbage"),
        ("turn/realm/r/user/x/allocation/1/status", NEW),
        ("unrelated", "new lifetime=600"),
    ],
)
def test_what_is_not_a_traverse_allocation_is_ignored(channel, data):
    assert parse_event(channel, data) is None


def test_a_realmless_channel_still_parses():
    e = parse_event(f"turn/user/{USER}/allocation/7/status", NEW)
    assert e is not None and e.relay_key == RELAY


def test_live_allocations_come_and_go_per_relay():
    book = AllocationBook()
    book.apply(ev("status", NEW), now=1000)
    book.apply(ev("status", NEW, base=BASE[:-1] + "2"), now=1000)
    other = f"turn/realm/r/user/1795708652:{opaque_id(grant='g_b', relay_key=OTHER)}/allocation/3"
    book.apply(ev("status", NEW, base=other), now=1000)
    assert book.live_counts(now=1001) == {RELAY: 2, OTHER: 1}
    book.apply(ev("status", "deleted"), now=1002)
    assert book.live_counts(now=1003) == {RELAY: 1, OTHER: 1}
    # No end published (the relay stopped): live until its lifetime runs out.
    assert book.live_counts(now=1000 + 601) == {}
    book.apply(ev("status", "refreshed lifetime=600", base=other), now=1500)
    assert book.live_counts(now=1601) == {OTHER: 1}


def test_an_allocation_cannot_outlive_its_credential_by_more_than_a_lifetime():
    book = AllocationBook()
    expiring = f"turn/realm/r/user/2000:{opaque_id(grant='g_c', relay_key=RELAY)}/allocation/1"
    book.apply(ev("status", "new lifetime=600", base=expiring), now=1900)
    # Refreshed at 2400 (its credential expired at 2000): 600 s past the expiry, not from now.
    book.apply(ev("status", "refreshed lifetime=600", base=expiring), now=2400)
    assert book.live_counts(now=2599) == {RELAY: 1}
    assert book.live_counts(now=2601) == {}


def test_the_probers_allocations_show_the_relay_publishes_but_are_not_load():
    book = AllocationBook()
    probe = f"turn/realm/r/user/1795708652:{probe_opaque_id(RELAY)}/allocation/9"
    book.apply(ev("status", NEW, base=probe), now=10)
    book.apply(ev("traffic", "rcvp=1, rcvb=100, sentp=1, sentb=100", base=probe), now=10)
    assert book.live_counts(now=11) == {}
    assert RELAY in book.seen and book.take_pending() == {}


def test_bytes_are_the_deltas_then_the_rest_of_the_total():
    book = AllocationBook()
    book.apply(ev("status", NEW), now=0)
    book.apply(ev("traffic", "rcvp=2048, rcvb=1000, sentp=0, sentb=10"), now=1)
    book.apply(ev("traffic", "rcvp=2048, rcvb=500, sentp=0, sentb=5"), now=2)
    first = book.take_pending()
    assert (first[("g_abc", RELAY)].received, first[("g_abc", RELAY)].sent) == (1500, 15)
    assert first[("g_abc", RELAY)].allocations == 1
    book.apply(ev("traffic", "rcvp=10, rcvb=200, sentp=0, sentb=2"), now=3)
    book.apply(ev("status", "deleted"), now=4)
    book.apply(ev("total_traffic", "rcvp=5000, rcvb=1800, sentp=4, sentb=20"), now=4)
    rest = book.take_pending()[("g_abc", RELAY)]
    # 200 + 2 from the delta, and 100 + 3 that no delta carried: 1,800 and 20 in all.
    assert (rest.received, rest.sent, rest.allocations) == (300, 5, 0)
    assert book.live == {}


def test_an_allocation_from_before_the_listener_counts_as_live_and_its_total_in_full():
    book = AllocationBook()
    book.resume(ev("status", NEW), now=50)
    assert book.live_counts(now=51) == {RELAY: 1}
    assert book.take_pending() == {}  # not counted as a new allocation
    book.apply(ev("total_traffic", "rcvp=9, rcvb=900, sentp=9, sentb=90"), now=60)
    t = book.take_pending()[("g_abc", RELAY)]
    assert (t.received, t.sent) == (900, 90)


def test_pending_that_could_not_be_written_is_counted_with_the_next():
    book = AllocationBook()
    book.apply(ev("status", NEW), now=0)
    book.apply(ev("traffic", "rcvp=1, rcvb=10, sentp=1, sentb=1"), now=1)
    failed = book.take_pending()
    book.apply(ev("traffic", "rcvp=1, rcvb=5, sentp=1, sentb=1"), now=2)
    book.give_back(failed)
    t = book.take_pending()[("g_abc", RELAY)]
    assert (t.received, t.sent, t.allocations) == (15, 2, 1)


def test_forgotten_once_long_past_their_lifetime():
    book = AllocationBook()
    book.apply(ev("status", NEW), now=0)
    book.expire(now=600 + 59)
    assert book.live
    book.expire(now=600 + 61)
    assert not book.live
