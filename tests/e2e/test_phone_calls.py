"""Calls that behave like a phone, in real Chromium pages through a real coturn: ringing on any
page, decline, no answer, answered on another device, busy, resume after a dropped socket, ICE
restart onto a second relay, mute shown on the other side, and a 390 px layout."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from calls.models import Call, CallEvent, CallState, EndReason, Participant
from signaling.broadcast import _deliver
from tests.conftest import TcpProxy, loopback_relay
from tests.e2e.conftest import (
    CONNECTED,
    RINGING,
    answer,
    dial,
    dial_and_answer,
    media_state,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RING_TIMEOUT = 6.0
# For both Daphne and the worker: a call nobody answers ends after RING_TIMEOUT (not 60 s).
# One relay per caller: when it dies there is no second allocation to fail over to, so only an
# ICE restart with fresh ICE servers brings the call back (with two, Chrome switches pairs
# by itself, without a restart: seen in this test before it pinned one).
SERVICES_ENV = {"CALL_RING_TIMEOUT": str(RING_TIMEOUT), "RELAYS_PER_CALLER": "1"}
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))


def relay_up(coturn, name: str = "phone-relay"):
    relay, server = loopback_relay(coturn, name, rig=True)  # see test_relay_call: a loopback rig
    return relay, server


def alice_and_bob(services, browser, coturn, password):
    """One relay, swept up by the worker, and alice's and bob's home pages (relay-only)."""
    base = services["base"]
    relay_up(coturn)
    assert sweep_through_worker() == {"phone-relay": "up"}
    return base, sign_in(browser, base, "alice", password), sign_in(browser, base, "bob", password)


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000)


def end_reason(page) -> str | None:
    return page.evaluate("window.traverseCall ? window.traverseCall.endReason : null")


def test_ringing_on_any_page_then_decline(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base, a, b = alice_and_bob(services, browser, coturn, password)
    b.goto(base + "/calls/")  # not the home page: calls ring on every page of the site
    wait_until(b, "window.traverseHome && window.traverseHome.online")

    t_dial = time.perf_counter()
    dial(a, "bob")
    wait_until(b, RINGING, timeout=10_000)
    dial_to_ringing = ms_since(t_dial)
    b.set_viewport_size({"width": 390, "height": 700})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    b.screenshot(path=str(SCREENSHOTS / "ringing-on-history-390.png"))
    assert b.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    banner = b.inner_text("#ringer")
    assert "Alice" in banner and "@alice" in banner and "video call" in banner
    # The callee hears the ringtone and the caller the ringback (autoplay allowed in this run).
    wait_until(b, "window.traverseRinger.tone.playing === 'ringtone'")
    wait_until(a, "window.traverseRinger.tone.playing === 'ringback'")
    wait_until(b, "document.title.includes('is calling')", timeout=3000)

    t_decline = time.perf_counter()
    b.click("#ringer [data-action=decline]")
    wait_until(a, "window.traverseCall.endReason === 'declined'", timeout=10_000)
    decline_to_told = ms_since(t_decline)
    assert a.inner_text("#call-status") == "Declined"
    wait_until(b, "window.traverseRinger.ringing.length === 0")
    assert b.evaluate("window.traverseRinger.tone.playing") is None
    a.wait_for_url("**/details/", timeout=10_000)
    assert "Declined" in a.inner_text("#outcome")
    call = Call.objects.get()
    assert call.end_reason == EndReason.DECLINED and not call.missed
    e2e_figures.append(f"dial -> ringing on the callee's page: {dial_to_ringing} ms")
    e2e_figures.append(f"decline -> caller told: {decline_to_told} ms")


def test_no_answer_ends_both_sides_and_is_missed(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    from calls.tasks import reap_calls

    base, a, b = alice_and_bob(services, browser, coturn, password)
    dial(a, "bob")
    wait_until(b, RINGING, timeout=10_000)
    time.sleep(RING_TIMEOUT + 0.5)
    reap_calls.delay().get(timeout=30)  # the reaper beat runs every CALL_REAP_INTERVAL
    wait_until(a, "window.traverseCall.endReason === 'no_answer'", timeout=10_000)
    assert a.inner_text("#call-status") == "No answer"
    wait_until(b, "window.traverseRinger.ringing.length === 0", timeout=10_000)
    assert b.evaluate("window.traverseRinger.notices.map(n => n.text)") == [
        "Missed call from Alice."
    ]
    # The connection set up while it rang (early ICE) is gone with the ring, on both sides.
    wait_until(b, "window.traverseRinger.mounted === null")
    assert b.locator(".call-overlay").count() == 0
    assert a.evaluate("window.traverseCall.early.size") == 0
    call = Call.objects.get()
    assert call.end_reason == EndReason.NO_ANSWER and call.missed
    b.goto(base + "/")
    assert b.inner_text("#missed-count").startswith("1 missed call")
    b.goto(base + "/calls/")
    assert b.locator("li.call-row.missed").count() == 1
    assert "Missed" in b.inner_text("li.call-row.missed")


def test_two_pages_of_the_callee_one_answers_the_other_stops(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base = services["base"]
    relay_up(coturn)
    assert sweep_through_worker() == {"phone-relay": "up"}
    a = sign_in(browser, base, "alice", password)
    b1 = sign_in(browser, base, "bob", password)
    b2 = sign_in(browser, base, "bob", password)
    dial(a, "bob")
    for page in (b1, b2):
        wait_until(page, RINGING, timeout=10_000)
    answer(b1)
    for page in (a, b1):
        wait_until(page, CONNECTED, timeout=20_000)
    wait_until(b2, "window.traverseRinger.ringing.length === 0", timeout=10_000)
    assert b2.evaluate("window.traverseRinger.notices.map(n => n.text)") == [
        "Answered on another device."
    ]
    assert b2.evaluate("window.traverseRinger.tone.playing") is None
    assert "Answered on another device" in b2.inner_text("#ringer")
    # The second page can't take the call by opening it; it is told where the call is.
    call = Call.objects.get()
    b2.goto(f"{base}/calls/{call.id}/")
    wait_until(b2, "window.traverseCall.status === 'on another device'", timeout=10_000)
    assert b2.is_visible("#take-over")
    assert a.evaluate("window.traverseCall.connections") == 1


def test_busy_when_the_callee_is_in_a_call(
    services, browser, coturn, alice, bob, charlie, password, e2e_figures
):
    base, a, b = alice_and_bob(services, browser, coturn, password)
    c = sign_in(browser, base, "charlie", password)
    dial_and_answer(a, b, "bob")
    dial(c, "bob")
    wait_until(c, "window.traverseCall.endReason === 'busy'", timeout=10_000)
    assert c.inner_text("#call-status") == "Busy"
    assert b.evaluate("window.traverseRinger.ringing.length") == 0
    busy = Call.objects.get(created_by=charlie)
    assert busy.end_reason == EndReason.BUSY
    assert a.evaluate("window.traverseCall.status") == "connected"


def test_a_dropped_socket_resumes_without_loss_or_duplicates(
    services, browser, coturn, alice, bob, password, e2e_figures, request
):
    base = services["base"]
    relay_up(coturn)
    assert sweep_through_worker() == {"phone-relay": "up"}
    port = int(base.rsplit(":", 1)[1])
    proxy = TcpProxy(("127.0.0.1", port))  # alice's whole connection to the server goes through it
    request.addfinalizer(proxy.close)
    via_proxy = f"http://127.0.0.1:{proxy.port}"
    a = sign_in(browser, via_proxy, "alice", password)
    b = sign_in(browser, base, "bob", password)
    dial_and_answer(a, b, "bob")
    # "Connected" comes before the media now (the connection was up while it rang): the claim
    # below is that media that flows keeps flowing, so it flows first.
    wait_until(a, "window.traverseCall.mediaFlowingAt !== null", timeout=10_000)
    bytes_before = a.evaluate("window.traverseCall.inboundBytes()")
    assert bytes_before > 0

    proxy.cut()  # the server's side of alice's socket is gone; new connections are refused
    t_cut = time.perf_counter()
    wait_until(a, "window.traverseCall.signalingDrops >= 1", timeout=10_000)
    wait_until(b, 'window.traverseCall.status.startsWith("the other side\'s signaling dropped")')
    # While alice is away, bob mutes: that message must reach her after she resumes.
    b.click("#mute")
    time.sleep(1.5)
    proxy.restore()
    wait_until(a, "window.traverseCall.signal.counters.resumes >= 1", timeout=15_000)
    wait_until(a, "window.traverseCall.peerMedia && window.traverseCall.peerMedia.audio === false")
    resumed_ms = ms_since(t_cut)
    counters = a.evaluate("window.traverseCall.signal.counters")
    assert counters["resumeFailures"] == 0 and counters["duplicates"] == 0, counters
    assert counters["gaps"] == 0 and counters["replayed"] >= 1, counters
    assert a.is_visible("#peer-muted")
    # Nobody renegotiated (one peer connection each, ever), and the media never stopped.
    state = "({status: traverseCall.status, connections: traverseCall.connections})"
    assert [p.evaluate(state) for p in (a, b)] == [{"status": "connected", "connections": 1}] * 2
    time.sleep(1)
    bytes_after = a.evaluate("window.traverseCall.inboundBytes()")
    assert bytes_after > bytes_before, (
        bytes_before,
        bytes_after,
        b.evaluate("traverseCall.rtpBytes()"),
    )
    wait_until(b, "window.traverseCall.status === 'connected'")
    e2e_figures.append(
        f"resume: socket cut -> resumed with the missed mute: {resumed_ms} ms "
        f"({counters['replayed']} frames replayed, 0 duplicates)"
    )


def push_into_session(session: str, call, frame: str, body: dict) -> None:
    """Hand a frame to a device session as the server's services do (signaling.broadcast), from
    a thread of its own: Playwright's sync API runs an event loop in this one."""
    event = {"frame": frame, "call": str(call.pk), "body": body}
    with ThreadPoolExecutor(1) as pool:
        pool.submit(
            async_to_sync(_deliver), "sessions", [session], event, loop_client=False
        ).result()


def test_a_frame_about_the_peer_older_than_one_taken_is_ignored(
    services, browser, coturn, alice, bob, password
):
    """Frames about a peer can reach a page out of order (tests/signaling/test_grace_window:
    after a server restart, the reap's `peer-reconnecting` came after the peer's own
    `peer-joined`, and the page stayed at "signaling dropped" with media flowing). The page
    takes the newest step, not the last to arrive: an older frame changes nothing, a newer one
    is shown."""
    base, a, b = alice_and_bob(services, browser, coturn, password)
    dial_and_answer(a, b, "bob")
    call = Call.objects.get()
    alices = Participant.objects.get(call=call, user=alice).session
    answered = CallEvent.objects.filter(call=call, user=bob, name="accepted").latest("id").pk
    # As the reap's was: committed before what alice's page knows of bob (his answer, or her
    # join's list of peers when she joined after it).
    push_into_session(
        alices,
        call,
        "peer-reconnecting",
        {"user": bob.pk, "graceSeconds": 30, "step": answered - 1},
    )
    wait_until(a, "window.traverseCall.staleFrames === 1")
    a.wait_for_timeout(500)
    peer = "window.traverseCall.peerList()[0].status"
    assert a.evaluate(f"[window.traverseCall.status, {peer}]") == ["connected", "connected"]
    # A newer one is taken (here made up: bob's socket is in fact fine).
    push_into_session(
        alices,
        call,
        "peer-reconnecting",
        {"user": bob.pk, "graceSeconds": 30, "step": answered + 10**6},
    )
    wait_until(a, f"{peer} === 'signaling dropped'")
    assert a.evaluate("window.traverseCall.status").startswith("the other side's signaling dropped")
    assert a.evaluate("window.traverseCall.staleFrames") == 1


def test_ice_restart_moves_the_call_to_the_second_relay(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base = services["base"]
    first, first_server = relay_up(coturn, "relay-one")
    second, second_server = relay_up(coturn, "relay-two")
    assert sweep_through_worker() == {"relay-one": "up", "relay-two": "up"}
    a = sign_in(browser, base, "alice", password)  # sign_in sets relay-only
    b = sign_in(browser, base, "bob", password)
    dial_and_answer(a, b, "bob")
    pair = wait_until(a, "window.traverseCall.selectedPair()", timeout=5_000)
    carrying = first_server if pair["relayUrl"] in first_server.urls else second_server
    other = second_server if carrying is first_server else first_server

    assert [r["name"] for r in a.evaluate("window.traverseCall.ice.relays")] == [
        "relay-one" if carrying is first_server else "relay-two"
    ]

    # The media flows before the relay dies (so that what flows after is the restart's doing).
    for page in (a, b):
        wait_until(page, "window.traverseCall.inboundBytes().then(n => n > 0)", timeout=10_000)
    carrying.stop()
    t_kill = time.perf_counter()
    # The health sweeps see it go (down after RELAY_DOWN_AFTER failed sweeps; forced here, as
    # an admin's "probe now" does, rather than waiting out the sweep interval), so the fresh ICE
    # servers that a restart fetches name the other relay.
    from django.conf import settings

    from relays.models import Relay, RelayStatus
    from relays.services import relay_sweep

    def sweep_now() -> None:  # in a thread: Playwright's event loop runs in this one
        from django.db import connection

        try:
            relay_sweep(force=True)
        finally:
            connection.close()

    for _ in range(settings.RELAY_DOWN_AFTER):
        with ThreadPoolExecutor(1) as pool:
            pool.submit(sweep_now).result(60)
    dead = "relay-one" if carrying is first_server else "relay-two"
    assert Relay.objects.get(name=dead).status == RelayStatus.DOWN
    for page in (a, b):
        wait_until(page, "window.traverseCall.recoveries >= 1", timeout=60_000)
        wait_until(page, CONNECTED, timeout=30_000)
    recovered_ms = ms_since(t_kill)
    # The pair the restart selected (right at "connected", getStats may still name the old one).
    try:
        wait_until(
            a,
            "window.traverseCall.selectedPair().then(p => p && p.connectionType === 'relay'"
            f" && {json.dumps(other.urls)}.includes(p.relayUrl))",
            timeout=10_000,
        )
    except TimeoutError as e:
        raise AssertionError(a.evaluate("window.traverseCall.selectedPair()")) from e
    bytes_then = a.evaluate("window.traverseCall.inboundBytes()")
    time.sleep(1)
    assert a.evaluate("window.traverseCall.inboundBytes()") > bytes_then, [
        media_state(p) for p in (a, b)
    ]
    restarts = a.evaluate("window.traverseCall.iceRestarts")
    page_ms = a.evaluate("window.traverseCall.lastRecoveryMs")
    e2e_figures.append(
        f"ICE restart: relay killed -> both pages connected through the other relay: "
        f"{recovered_ms} ms (page: {page_ms} ms from the path breaking, {restarts} restart(s))"
    )
    assert Call.objects.get().state == CallState.CONNECTED


def test_mute_shows_on_the_other_side_and_390px_has_no_sideways_scroll(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base, a, b = alice_and_bob(services, browser, coturn, password)
    t_dial = time.perf_counter()
    dial_and_answer(a, b, "bob")
    wait_until(b, "window.traverseCall.mediaFlowingAt !== null", timeout=10_000)
    answered = b.evaluate("window.traverseCall.answeredAt")
    flowing = b.evaluate("window.traverseCall.mediaFlowingAt")
    e2e_figures.append(
        f"answer -> first remote frame decoded: {round(flowing - answered)} ms "
        f"(dial -> connected {ms_since(t_dial)} ms)"
    )
    assert b.is_hidden("#peer-muted")
    a.click("#mute")
    wait_until(b, "window.traverseCall.peerMedia && window.traverseCall.peerMedia.audio === false")
    assert b.is_visible("#peer-muted")
    a.click("#camera")
    wait_until(b, "window.traverseCall.peerMedia.video === false")
    assert b.is_visible("#peer-camera-off")
    a.click("#mute")
    wait_until(b, "window.traverseCall.peerMedia.audio === true")
    assert b.is_hidden("#peer-muted")
    wait_until(a, "window.traverseCall.quality !== null", timeout=15_000)
    assert a.inner_text("#quality").split(" ")[0] in ("good", "fair", "poor")
    wait_until(a, "document.getElementById('timer').textContent !== '00:00'")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    call = Call.objects.get()
    wide = "document.documentElement.scrollWidth <= window.innerWidth"
    for page, name in ((a, "call"), (b, "call-callee")):
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        assert page.evaluate(wide), f"{name}: scrolls sideways at 390 px"
        page.screenshot(path=str(SCREENSHOTS / f"{name}-390.png"))
    b.click("#hangup")
    a.wait_for_url("**/details/", timeout=10_000)
    for path, name in (
        ("/", "home"),
        ("/calls/", "history"),
        (f"/calls/{call.id}/details/", "detail"),
    ):
        a.goto(base + path)
        assert a.evaluate(wide), f"{name}: scrolls sideways at 390 px"
        a.screenshot(path=str(SCREENSHOTS / f"{name}-390.png"), full_page=True)
