"""Probes against real coturn processes and ports where nothing listens."""

import asyncio
import time

from relays.credentials import turn_rest_pair
from relays.ice_urls import parse_ice_url
from relays.probes import probe_relay
from tests.conftest import free_port


def creds(secret):
    return turn_rest_pair(secret=secret, expires_at=int(time.time()) + 60, opaque_id="probe-test")


def run(urls, secret, timeout=2.0):
    username, password = creds(secret)
    return asyncio.run(
        probe_relay(
            [parse_ice_url(u) for u in urls], username=username, password=password, timeout=timeout
        )
    )


def test_healthy_relay_answers_binding_and_allocates_on_udp_and_tcp(coturn):
    relay = coturn()
    report = run(relay.urls, relay.secret)
    assert report.ok, report.error
    kinds = [(r.kind, r.url) for r in report.results]
    assert ("stun", f"stun:127.0.0.1:{relay.port}") in kinds
    assert {u for k, u in kinds if k == "turn"} == set(relay.urls)
    assert report.rtt_ms is not None and report.rtt_ms > 0


def test_probe_leaves_no_allocation_behind(coturn):
    # With a quota of one allocation per username, an allocation the probe leaked would block
    # the next probe with that username (486 Allocation Quota Reached) for the allocation's
    # whole lifetime. coturn frees a deleted one within about a second, so each round may retry
    # for a few seconds, far below the lifetime a leak would hold it.
    relay = coturn(extra=["user-quota=1"])
    udp_only = [relay.urls[0]]
    username, password = creds(relay.secret)
    for _ in range(3):
        for _attempt in range(20):
            report = asyncio.run(
                probe_relay(
                    [parse_ice_url(u) for u in udp_only],
                    username=username,
                    password=password,
                    timeout=2,
                )
            )
            if report.ok:
                break
            assert [r.error for r in report.results if r.kind == "turn"] == ["486"], report.error
            time.sleep(0.5)
        assert report.ok, report.error


def test_wrong_secret_is_a_401_on_every_turn_url(coturn):
    relay = coturn()
    report = run(relay.urls, "wrong-" + relay.secret)
    assert not report.ok
    assert [r.error for r in report.results if r.kind == "turn"] == ["401", "401"]
    assert "401" in report.error


def test_dead_ports_fail_within_the_timeout():
    port = free_port()
    urls = [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"]
    t0 = time.perf_counter()
    report = run(urls, "whatever", timeout=1.0)
    elapsed = time.perf_counter() - t0
    assert not report.ok
    by_url = {r.url: r.error for r in report.results}
    assert by_url[f"turn:127.0.0.1:{port}?transport=tcp"] == "refused"
    # aioice would retransmit for 63.5 s over UDP; the probe gives up at its timeout.
    assert by_url[f"turn:127.0.0.1:{port}?transport=udp"] == "timeout"
    assert by_url[f"stun:127.0.0.1:{port}"] in ("refused", "timeout")
    assert elapsed < 30  # a bound, not a speed claim: unbounded it would take over a minute
