"""Probes against real coturn processes and ports where nothing listens."""

import asyncio
import time

from relays.credentials import turn_rest_pair
from relays.ice_urls import parse_ice_url
from relays.probes import ProbePlan, probe_relay
from tests.conftest import free_port
from tests.relays.conftest import probe


def test_healthy_relay_answers_binding_and_allocates_on_udp_and_tcp(coturn):
    relay = coturn()
    report = probe(relay.urls, relay.secret)
    assert report.ok, report.error
    kinds = [(r.kind, r.url, r.transport) for r in report.results]
    assert ("stun", f"stun:127.0.0.1:{relay.port}", "udp") in kinds
    assert {(u, t) for k, u, t in kinds if k == "turn"} == {
        (relay.urls[0], "udp"),
        (relay.urls[1], "tcp"),
    }
    assert report.rtt_ms is not None and report.rtt_ms > 0
    assert report.transports() == {"stun": True, "udp": True, "tcp": True}


def test_probe_leaves_no_allocation_behind(coturn):
    # With a quota of one allocation per username, an allocation the probe leaked would block
    # the next probe with that username (486 Allocation Quota Reached) for the allocation's
    # whole lifetime. coturn frees a deleted one within about a second, so each round may retry
    # for a few seconds, far below the lifetime a leak would hold it.
    relay = coturn(extra=["user-quota=1"])
    username, password = turn_rest_pair(
        secret=relay.secret, expires_at=int(time.time()) + 60, opaque_id="q"
    )
    plan = ProbePlan(
        urls=[parse_ice_url(relay.urls[0])],
        credentials=lambda exp: (username, password),
        timeout=2,
        packets=0,
        audit=False,
        check_credentials=False,
    )
    for _ in range(3):
        for _attempt in range(20):
            report = asyncio.run(probe_relay(plan))
            if report.ok:
                break
            assert [r.error for r in report.results if r.kind == "turn"] == ["486"], report.error
            time.sleep(0.5)
        assert report.ok, report.error


def test_wrong_secret_is_a_401_on_every_turn_url(coturn):
    relay = coturn()
    report = probe(relay.urls, "wrong-" + relay.secret, check_credentials=True)
    assert not report.ok
    assert [r.error for r in report.results if r.kind == "turn"] == ["401", "401"]
    assert "401" in report.error
    # A credential valid for a day fails too: a wrong secret, not a clock that runs ahead.
    assert report.credentials.bad_secret and report.credentials.clock_skew is None


def test_dead_ports_fail_within_the_timeout():
    port = free_port()
    urls = [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"]
    t0 = time.perf_counter()
    report = probe(urls, "whatever", timeout=1.0, packets=10, audit=True, check_credentials=True)
    elapsed = time.perf_counter() - t0
    assert not report.ok and not report.any_ok
    by_url = {r.url: r.error for r in report.results}
    assert by_url[f"turn:127.0.0.1:{port}?transport=tcp"] == "refused"
    # aioice would retransmit for 63.5 s over UDP; the probe gives up at its timeout.
    assert by_url[f"turn:127.0.0.1:{port}?transport=udp"] == "timeout"
    assert by_url[f"stun:127.0.0.1:{port}"] in ("refused", "timeout")
    assert report.audit.error == "timeout" and report.data_plane.error == "timeout"
    assert elapsed < 20  # a bound, not a speed claim: unbounded it would take over a minute
