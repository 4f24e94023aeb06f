"""Load and traffic as relays publish them: real coturn with redis-statsdb, a real Redis, the
listener (manage.py relay_stats) in a thread, on the test database."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from aioice.turn import create_turn_endpoint
from django.db import connection
from django.utils import timezone

from relays.coturn import statsdb_option
from relays.models import GrantTraffic, Relay
from relays.services import ice_servers_issue, relay_create, relay_sweep
from relays.snapshot import build
from relays.stats_listener import StatsListener
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class _Sink(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = 0

    def datagram_received(self, data, addr):
        self.got += len(data)


async def in_thread(fn, *args, **kwargs):
    """fn in a worker thread, with that thread's database connection closed afterwards (the
    test database is dropped at the end, and an open connection would hold it)."""

    def run():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return await asyncio.to_thread(run)


@pytest.fixture
def publishing_relay(coturn, stats_redis, settings):
    """A relay whose coturn publishes to stats_redis, registered, swept once (so it is up, and
    its probe's allocation shows it publishes), and a loopback rig (data reaches a local peer)."""
    settings.RELAY_STATS_REDIS_URL = stats_redis.url
    settings.RELAY_STATS_FLUSH_SECONDS = 0.2
    server = coturn(allow_loopback_peers=True, extra=[statsdb_option(stats_redis.url)])
    relay = relay_create(
        name="published",
        urls=server.urls,
        secret=server.secret,
        region="eu",
        allow_private=True,
        private_reason="a test rig on loopback",
        unsafe_override=True,
    )
    return relay, server


@pytest.fixture
def listener():
    running: list[tuple[StatsListener, threading.Thread]] = []

    def start() -> StatsListener:
        li = StatsListener()
        t = threading.Thread(target=li.run, daemon=True)
        t.start()
        assert li.active.wait(10), "the listener did not start listening"
        running.append((li, t))
        return li

    yield start
    for li, t in running:
        li.stop.set()
        t.join(10)


def make_up(relay: Relay) -> None:
    now = timezone.now()
    Relay.objects.filter(pk=relay.pk).update(
        status="up", last_checked_at=now, audited_at=now, last_rtt_ms=1.0
    )


async def allocate(server_entry: dict, *, transport: str = "udp", send: int = 0):
    """An allocation with the credentials a caller was given; `send` datagrams of 1,000 bytes
    to a local peer through it. Returns (turn transport, peer sink, peer transport)."""
    loop = asyncio.get_running_loop()
    host_port = server_entry["urls"][0].split(":", 1)[1].split("?")[0]
    host, port = host_port.rsplit(":", 1)
    turn, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=(host, int(port)),
        username=server_entry["username"],
        password=server_entry["credential"],
        lifetime=600,
        transport=transport,
    )
    peer, sink = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    for _ in range(send):
        turn.sendto(b"x" * 1000, peer.get_extra_info("sockname"))
        await asyncio.sleep(0.002)
    return turn, sink, peer


def test_live_allocations_and_bytes_per_grant_come_from_the_relay(
    publishing_relay, listener, alice
):
    relay, _server = publishing_relay
    listener()
    relay_sweep(relay_ids=[relay.pk], force=True)
    # The prober's own allocation shows the relay publishes; it is not a caller's load.
    relay.refresh_from_db()
    wait_for(
        lambda: Relay.objects.get(pk=relay.pk).stats_at, what="the probe's allocation to be heard"
    )
    assert Relay.objects.get(pk=relay.pk).live_allocations == 0
    make_up(relay)
    ice = ice_servers_issue(user=alice)
    assert ice["status"] == "ok"
    entry = ice["iceServers"][0]

    async def call():
        turn, sink, peer = await allocate(entry, send=40)
        live = await in_thread(
            wait_for,
            lambda: Relay.objects.get(pk=relay.pk).live_allocations == 1,
            what="one live allocation",
        )
        # Selection reads the published count, not the grants.
        c = (await in_thread(build)).candidates[str(relay.pk)]
        await asyncio.sleep(0.3)
        turn.close()
        peer.close()
        return live, c, sink.got

    live, candidate, delivered = asyncio.run(call())
    assert live and candidate.allocations == 1 and candidate.load_source == "published"
    assert delivered >= 30_000  # the data did go through the relay
    wait_for(
        lambda: Relay.objects.get(pk=relay.pk).live_allocations == 0, what="no live allocation"
    )
    row = wait_for(
        lambda: GrantTraffic.objects.filter(grant_id=ice["grant"], relay=relay).first(),
        what="the grant's traffic",
    )
    row = wait_for(
        lambda: (r := GrantTraffic.objects.get(pk=row.pk)).received_bytes >= 40_000 and r,
        what="the grant's whole traffic",
    )
    assert row.user == alice and row.allocations == 1
    # 40 datagrams of 1,000 bytes, each with a ChannelData or Send header, and the
    # Allocate/Refresh/ChannelBind requests: a little over 40,000, not twice that.
    assert 40_000 <= row.received_bytes < 48_000, row.received_bytes
    assert row.sent_bytes > 0


def test_a_relay_full_by_its_published_count_gets_no_new_callers(
    publishing_relay, listener, alice, bob
):
    relay, _server = publishing_relay
    Relay.objects.filter(pk=relay.pk).update(capacity=2)
    listener()
    make_up(relay)
    ice = ice_servers_issue(user=alice)
    entry = ice["iceServers"][0]

    async def two_allocations_then_ask():
        udp, _, p1 = await allocate(entry)
        tcp_entry = {**entry, "urls": [entry["urls"][1]]}
        tcp, _, p2 = await allocate(tcp_entry, transport="tcp")
        await in_thread(
            wait_for,
            lambda: Relay.objects.get(pk=relay.pk).live_allocations == 2,
            what="two live allocations",
        )
        # One unexpired grant, two allocations: full by what the relay says.
        await in_thread(make_up, relay)
        bob_ice = await in_thread(ice_servers_issue, user=bob)
        for t in (udp, tcp, p1, p2):
            t.close()
        return bob_ice

    bob_ice = asyncio.run(two_allocations_then_ask())
    assert bob_ice["status"] == "no-healthy-relay" and bob_ice["relays"] == []


def test_allocations_from_before_the_listener_started_count_at_once(
    publishing_relay, listener, alice
):
    relay, _server = publishing_relay
    make_up(relay)
    entry = ice_servers_issue(user=alice)["iceServers"][0]

    async def allocate_then_listen():
        turn, _, peer = await allocate(entry)
        await asyncio.sleep(0.5)  # coturn has stored its status key
        await in_thread(listener)
        live = await in_thread(
            wait_for,
            lambda: Relay.objects.get(pk=relay.pk).live_allocations == 1,
            what="the earlier allocation",
        )
        turn.close()
        peer.close()
        return live

    assert asyncio.run(allocate_then_listen())


def test_a_relay_that_stopped_publishing_falls_back_to_grants(publishing_relay, alice, settings):
    relay, _server = publishing_relay
    make_up(relay)
    ice_servers_issue(user=alice)
    long_ago = timezone.now() - timedelta(seconds=10 * settings.RELAY_SWEEP_INTERVAL)
    Relay.objects.filter(pk=relay.pk).update(live_allocations=7, stats_at=long_ago)
    c = build().candidates[str(relay.pk)]
    assert (c.allocations, c.load_source) == (1, "grants")
    Relay.objects.filter(pk=relay.pk).update(stats_at=timezone.now())
    c = build().candidates[str(relay.pk)]
    assert (c.allocations, c.load_source) == (7, "published")


def test_a_second_listener_waits_and_takes_over(publishing_relay, listener):
    first = listener()
    second = StatsListener()
    t = threading.Thread(target=second.run, daemon=True)
    t.start()
    try:
        assert not second.active.wait(1.5), "two listeners would count every byte twice"
        first.stop.set()
        assert second.active.wait(20), "the standby did not take over"
    finally:
        second.stop.set()
        t.join(10)


def test_statsdb_option_is_what_coturn_reads():
    assert statsdb_option("redis://:p%40ss@10.0.0.5:6380/3") == (
        'redis-statsdb="ip=10.0.0.5 dbname=3 port=6380 password=p@ss connect_timeout=5"'
    )
    assert statsdb_option("redis://127.0.0.1") == (
        'redis-statsdb="ip=127.0.0.1 dbname=0 port=6379 connect_timeout=5"'
    )
    with pytest.raises(ValueError, match="TCP|redis://"):
        statsdb_option("unix:///var/run/redis.sock")
