"""The whole path: a relay that Traverse registered, probed (through a real Celery worker) and
assigned carries a call between two real Chromium pages."""

from __future__ import annotations

import time

import pytest

from relays.models import Relay, RelayStatus
from relays.services import relay_create
from tests.conftest import loopback_relay
from tests.e2e.conftest import (
    CONNECTED,
    answer,
    dial_and_answer,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_two_browsers_call_through_the_assigned_relay(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base = services["base"]
    # allow-loopback-peers: both browsers' relay candidates are on 127.0.0.1, so the relay must
    # reach loopback peers. The safety audit rightly flags that relay unsafe, so this test rig
    # uses the admin override; production relays never do (see relays/coturn.py).
    relay_server = coturn(allow_loopback_peers=True)
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="e2e-relay",
        urls=relay_server.urls,
        secret=relay_server.secret,
        region="test",
        unsafe_override=True,
    )

    assert sweep_through_worker() == {"e2e-relay": "up"}
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UP and relay.last_rtt_ms is not None
    assert relay.unsafe and "127.0.0.1" in relay.accepted_peers  # the audit sees through the rig
    assert relay.probe_results.exists()

    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)

    a.fill("input[name=callee]", "bob")
    t_dial = time.perf_counter()
    a.click("#dial")
    a.wait_for_url("**/calls/*/")
    answer(b)
    for page in (a, b):
        wait_until(
            page,
            "window.traverseCall && window.traverseCall.status === 'connected'",
            timeout=20_000,
        )
    dial_to_connected_ms = (time.perf_counter() - t_dial) * 1000

    for page in (a, b):
        ice = page.evaluate("window.traverseCall.ice")
        assert [r["name"] for r in ice["relays"]] == ["e2e-relay"]
        pair = wait_until(page, "window.traverseCall.selectedPair()", timeout=5_000)
        assert pair["connectionType"] == "relay" and pair["localType"] == "relay", pair
        assert pair["relayUrl"] in relay_server.urls, pair
        wait_until(page, "window.traverseCall.report !== null")

    # The reports reach the server before hang-up.
    deadline = time.monotonic() + 10
    from calls.models import Call

    call = Call.objects.get()
    while (
        time.monotonic() < deadline and call.participants.exclude(connection_type="relay").exists()
    ):
        time.sleep(0.1)

    a.click("#hangup")
    for page in (a, b):
        page.wait_for_url("**/details/", timeout=10_000)
    call.refresh_from_db()
    assert call.state == "ended" and call.end_reason == "hangup"

    b.reload()
    rows = b.locator(".participants .participant")
    assert rows.count() == 2
    for username in ("alice", "bob"):
        row = b.locator(f".participant[data-user={username}]")
        assert row.locator(".conn-type").inner_text() == "relay"
        assert row.locator(".relay-name").inner_text() == "e2e-relay"

    e2e_figures.append(f"dial to both connected through the relay: {dial_to_connected_ms:.0f} ms")
    a.context.close()
    b.context.close()


def test_two_browsers_on_one_machine_call_through_the_run_commands_relay(
    services, browser, coturn, alice, bob, password
):
    """Someone trying Traverse with `dev.py run` on one machine calls between two windows. Its
    local relay passes the safety audit, with no override, and still carries the call: it
    relays between its own allocations, from 127.0.0.2. (Before, it refused all of loopback and
    such a call failed 'no network path' right after the answer.)"""
    relay, server = loopback_relay(coturn, "local", like_run_command=True)
    assert sweep_through_worker() == {"local": "up"}
    relay.refresh_from_db()
    assert not relay.unsafe and not relay.unsafe_override and relay.accepted_peers == []

    a = sign_in(browser, services["base"], "alice", password)
    b = sign_in(browser, services["base"], "bob", password)
    dial_and_answer(a, b, "bob")
    for page in (a, b):
        pair = wait_until(page, "window.traverseCall.selectedPair()", timeout=5_000)
        assert pair["connectionType"] == "relay" and pair["relayUrl"] in server.urls, pair
        assert pair["localCandidate"].startswith("127.0.0.2:"), pair
    for page in (a, b):  # media flows both ways
        start = page.evaluate("window.traverseCall.inboundBytes()")
        wait_until(page, f"window.traverseCall.inboundBytes().then((n) => n > {start} + 20000)")
    a.click("#hangup")
    b.wait_for_url("**/details/", timeout=10_000)
    a.context.close()
    b.context.close()


def test_relay_with_wrong_secret_is_marked_down_and_never_assigned(
    services, coturn, alice, client, password
):
    good_server = coturn(allow_loopback_peers=False)
    bad_server = coturn(allow_loopback_peers=False)
    relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="good",
        urls=good_server.urls,
        secret=good_server.secret,
    )
    relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="wrong-secret",
        urls=bad_server.urls,
        secret="not-" + bad_server.secret,
    )

    assert sweep_through_worker() == {"good": "up", "wrong-secret": "down"}
    bad = Relay.objects.get(name="wrong-secret")
    assert bad.status == RelayStatus.DOWN
    assert "401" in bad.last_error

    client.login(username="alice", password=password)
    for _ in range(5):
        body = client.get("/api/v1/ice-servers/").json()
        assert [r["name"] for r in body["relays"]] == ["good"]
        assert all(f":{bad_server.port}" not in u for s in body["iceServers"] for u in s["urls"])


def test_bad_frames_through_the_real_server(services, browser, alice, bob, password):
    """Through Daphne itself: an oversized frame, bad JSON and an unknown type each get a coded
    error, the socket stays up, and another user's socket is unaffected."""
    a = sign_in(browser, services["base"], "alice", password)
    b = sign_in(browser, services["base"], "bob", password)
    script = """async ([frames]) => {
        const ws = new WebSocket(`ws://${location.host}/ws/signal/?ice=0`);
        const inbox = [];
        ws.onmessage = (ev) => inbox.push(JSON.parse(ev.data));
        await new Promise((ok) => ws.addEventListener('open', ok));
        const next = async (type) => {
            for (let i = 0; i < 200; i++) {
                const at = inbox.findIndex((m) => m.type === type);
                if (at >= 0) return inbox.splice(at, 1)[0];
                await new Promise((r) => setTimeout(r, 25));
            }
            return null;
        };
        await next('welcome');
        const codes = [];
        for (const f of frames) { ws.send(f); const e = await next('error'); codes.push(e && e.body.code); }
        ws.send(JSON.stringify({v: 1, type: 'ping', id: 'after'}));
        const pong = await next('pong');
        window._ws = ws;
        return {codes, pong: pong && pong.ref, open: ws.readyState === WebSocket.OPEN};
    }"""
    frames = [
        '{"v":1,"type":"ping","body":{"pad":"' + "x" * 70_000 + '"}}',
        "{nope",
        '{"v":1,"type":"teleport"}',
    ]
    result = a.evaluate(script, [frames])
    assert result == {
        "codes": ["frame_too_large", "bad_json", "unknown_type"],
        "pong": "after",
        "open": True,
    }
    other = b.evaluate(script, [[]])
    assert other == {"codes": [], "pong": "after", "open": True}
    a.context.close()
    b.context.close()


def test_a_reloaded_page_rejoins_the_call(services, browser, coturn, alice, bob, password):
    """Either side may reload mid-call: it rejoins, perfect negotiation runs again, and both
    reach connected through the relay once more."""
    loopback_relay(
        coturn, "rejoin-relay", rig=True
    )  # browsers meet through it: see test_relay_call
    assert sweep_through_worker() == {"rejoin-relay": "up"}
    base = services["base"]
    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)
    dial_and_answer(a, b, "bob")
    connected = CONNECTED
    for reloading, other in ((b, a), (a, b)):
        before = other.evaluate("window.traverseCall.connections")
        reloading.reload()
        wait_until(reloading, connected, timeout=20_000)
        # The side that stayed saw the peer leave and come back, and connected anew.
        wait_until(other, f"window.traverseCall.connections > {before}", timeout=20_000)
        wait_until(other, connected, timeout=20_000)
        # Right at "connected", getStats() may not name the selected pair yet.
        pair = wait_until(reloading, "window.traverseCall.selectedPair()", timeout=5_000)
        assert pair["connectionType"] == "relay"
    a.click("#hangup")
    b.wait_for_url("**/details/", timeout=10_000)
    a.context.close()
    b.context.close()
