"""Instant answer (early ICE), in real Chromium pages through a real coturn: while it rings the
callee's page and the caller's set up their connection with no media and the callee's devices
closed; answering attaches the media with no page load and no renegotiation; a decline leaves
nothing open; of two ringing pages the one that answers keeps its connection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from calls.models import Call, EndReason
from tests.conftest import loopback_relay, wait_for
from tests.e2e.conftest import (
    RINGING,
    dial,
    media_state,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SERVICES_ENV = {"RELAYS_PER_CALLER": "1"}
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))

EARLY_UP = (
    "window.traverseCall && window.traverseCall.earlyList().length > 0 && "
    "window.traverseCall.earlyList().every(p => p.pc && p.pc.connection === 'connected')"
)
# RTP bytes sent and received on every connection of the page, early ones included.
RTP_BYTES = "window.traverseCall.rtpBytes()"


EARLY_STATE = """JSON.stringify(window.traverseCall ? {
  status: window.traverseCall.status, early: window.traverseCall.earlyList(),
  peers: window.traverseCall.peerList().map(p => [p.session, p.pc]),
  errors: window.traverseCall.errors, earlyErrors: window.traverseCall.earlyErrors,
  ice: (window.traverseCall.rtcConfig.iceServers || []).length,
} : {ringer: window.traverseRinger && window.traverseRinger.mounted})"""


def early_up(*named_pages, timeout: float = 20_000) -> None:
    """Wait for each page's early connections to be up; on a timeout, say what each page had."""
    try:
        for page in named_pages:
            wait_until(page, EARLY_UP, timeout=timeout)
    except TimeoutError:
        for page in named_pages:
            print("early state:", page.url, page.evaluate(EARLY_STATE))
        raise


def pages(services, browser, coturn, password, *callees):
    base = services["base"]
    loopback_relay(coturn, "early-relay", rig=True)
    assert sweep_through_worker() == {"early-relay": "up"}
    a = sign_in(browser, base, "alice", password)
    return base, a, [sign_in(browser, base, name, password) for name in callees]


def test_answer_starts_the_media_on_the_connection_set_up_while_it_rang(
    services, browser, coturn, alice, bob, password
):
    base, a, (b,) = pages(services, browser, coturn, password, "bob")
    b.evaluate("window.loadedOnce = true")  # gone if the page loads again
    dial(a, "bob")
    wait_until(b, RINGING, timeout=10_000)
    # Both sides are connected (ICE and DTLS, through the relay) before anyone answers...
    wait_until(a, EARLY_UP, timeout=20_000)
    wait_until(b, EARLY_UP, timeout=20_000)
    assert a.evaluate("window.traverseCall.status") == "ringing"
    # ...with the callee's camera and microphone closed, and no media either way.
    assert b.evaluate("window.traverseCall.localStream") is None
    b.wait_for_timeout(1500)
    for page in (a, b):
        assert page.evaluate(RTP_BYTES) == {"sent": 0, "received": 0}
    assert b.is_hidden(".call-overlay")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    b.screenshot(path=str(SCREENSHOTS / "early-ringing-home.png"))

    b.click("#ringer [data-action=accept-video]")
    b.wait_for_url("**/calls/*/")
    for page in (a, b):
        wait_until(page, "window.traverseCall.mediaFlowingAt", timeout=15_000)
        wait_until(page, "window.traverseCall.status === 'connected'")
    assert b.evaluate("window.loadedOnce") is True  # no page load between the click and media
    assert b.is_visible(".call-overlay #remote")
    wait_until(b, "window.traverseCall.quality")  # the first stats sample is shown
    b.screenshot(path=str(SCREENSHOTS / "early-answered-overlay.png"))
    b.set_viewport_size({"width": 390, "height": 800})
    assert b.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    b.screenshot(path=str(SCREENSHOTS / "early-answered-overlay-390.png"))
    # The connection that rang is the one in use: one per side, never renegotiated.
    for page in (a, b):
        assert page.evaluate("window.traverseCall.connections") == 1
        assert page.evaluate("window.traverseCall.early.size") == 0
        bytes_now = page.evaluate(RTP_BYTES)
        assert bytes_now["sent"] > 0 and bytes_now["received"] > 0
    assert b.evaluate("window.traverseCall.localStream.getVideoTracks().length") == 1
    call = Call.objects.get()
    assert {p.state for p in call.participants.all()} == {"joined"}
    # The path was recorded as usual (relay-only pages).
    wait_until(a, "window.traverseCall.report && window.traverseCall.report.connectionType")
    assert a.evaluate("window.traverseCall.report.connectionType") == "relay"

    b.click("#hangup")
    wait_until(a, "window.traverseCall.endReason === 'hangup'", timeout=10_000)
    b.wait_for_url("**/details/", timeout=10_000)


def test_a_decline_leaves_nothing_open_and_nothing_sent(
    services, browser, coturn, alice, bob, password
):
    base, a, (b,) = pages(services, browser, coturn, password, "bob")
    dial(a, "bob")
    wait_until(a, EARLY_UP, timeout=20_000)
    wait_until(b, EARLY_UP, timeout=20_000)
    b.evaluate("window.ringingCall = window.traverseCall")
    b.click("#ringer [data-action=decline]")
    wait_until(a, "window.traverseCall.endReason === 'declined'", timeout=10_000)
    wait_until(b, "window.traverseRinger.mounted === null", timeout=10_000)
    # Every connection is closed on both sides, and no media went either way.
    assert a.evaluate("window.traverseCall.early.size") == 0
    assert a.evaluate("window.traverseCall.peerList().every(p => !p.pc)")
    assert b.evaluate("window.ringingCall.ended && window.ringingCall.early.size === 0")
    assert b.evaluate("window.ringingCall.localStream") is None
    assert b.locator(".call-overlay").count() == 0
    assert Call.objects.get().end_reason == EndReason.DECLINED


def test_of_two_ringing_pages_the_one_that_answers_keeps_its_connection(
    services, browser, coturn, alice, bob, password
):
    base, a, (b1, b2) = pages(services, browser, coturn, password, "bob", "bob")
    dial(a, "bob")
    early_up(b1, b2, a)
    assert a.evaluate("window.traverseCall.earlyList().length") == 2
    b2.evaluate("window.ringingCall = window.traverseCall")
    b1.click("#ringer [data-action=accept-audio]")
    for page in (a, b1):
        wait_until(page, "window.traverseCall.status === 'connected'", timeout=15_000)
    wait_until(b2, "window.traverseRinger.mounted === null", timeout=10_000)
    assert b2.evaluate("window.ringingCall.endReason") == "answered_elsewhere"
    assert a.evaluate("window.traverseCall.early.size") == 0
    assert a.evaluate("window.traverseCall.connections") == 1
    # Answered without the camera: only the microphone opened. The early connection is up
    # before the devices open (connected is said first), so this waits for them.
    wait_until(b1, "window.traverseCall.devicesOpenAt", timeout=10_000)
    assert b1.evaluate("window.traverseCall.localStream.getVideoTracks().length") == 0
    wait_until(a, "window.traverseCall.inboundBytes().then(n => n > 0)")


def test_answering_the_instant_it_rings_answers_once(
    services, browser, coturn, alice, bob, password
):
    """A click before the mounted screen has its relays' credentials (or its early connection):
    the answer waits for them, goes to the server once, and the call connects. (It once went
    twice: the second `accept` came back `answered_elsewhere` and ended the callee's page.)"""
    base, a, (b,) = pages(services, browser, coturn, password, "bob")
    dial(a, "bob")
    b.wait_for_selector("#ringer [data-action=accept-video]")
    b.click("#ringer [data-action=accept-video]")
    for page in (a, b):
        wait_until(page, "window.traverseCall.status === 'connected'", timeout=20_000)
    b.wait_for_timeout(1000)
    assert b.evaluate("window.traverseCall.ended") is False
    assert b.evaluate("window.traverseCall.errors") == []
    call = Call.objects.get()
    assert call.events.filter(name="accepted").count() == 1
    assert b.evaluate("window.traverseCall.connections") == 1


def test_the_call_page_itself_negotiates_while_it_rings(
    services, browser, coturn, alice, bob, password
):
    """The callee who opens the ringing call's page (a notification, a link) gets the same:
    connected with no media and devices closed, then media on Answer."""
    base, a, (b,) = pages(services, browser, coturn, password, "bob")
    dial(a, "bob")
    wait_until(b, RINGING, timeout=10_000)
    call = Call.objects.get()
    b.goto(f"{base}/calls/{call.id}/")
    wait_until(b, EARLY_UP, timeout=20_000)
    wait_until(a, EARLY_UP, timeout=20_000)
    assert b.is_visible("#ringing-actions")
    assert b.evaluate("window.traverseCall.localStream") is None
    assert b.evaluate(RTP_BYTES) == {"sent": 0, "received": 0}
    b.click("#accept")
    for page in (a, b):
        wait_until(page, "window.traverseCall.mediaFlowingAt", timeout=15_000)
        assert page.evaluate("window.traverseCall.connections") == 1


RING_HOLD_SECONDS = float(os.environ.get("E2E_RING_HOLD_SECONDS", "20"))


def test_a_long_ring_keeps_the_connection_up_for_the_answer(
    services, browser, coturn, alice, bob, password
):
    """Answered late in the ring (E2E_RING_HOLD_SECONDS; the ring lasts CALL_RING_TIMEOUT, 60 s):
    the connection set up at the first ring is still up, still idle, and carries the media."""
    base, a, (b,) = pages(services, browser, coturn, password, "bob")
    dial(a, "bob")
    early_up(b, a)
    b.wait_for_timeout(RING_HOLD_SECONDS * 1000)
    for page in (a, b):
        assert page.evaluate(EARLY_UP), page.evaluate(EARLY_STATE)
        assert page.evaluate(RTP_BYTES) == {"sent": 0, "received": 0}
    b.click("#ringer [data-action=accept-video]")
    for page in (a, b):
        wait_until(page, "window.traverseCall.mediaFlowingAt", timeout=15_000)
        assert page.evaluate("window.traverseCall.connections") == 1


# Holding one step of the early negotiation 2.5 s, so that the answer comes at that step:
# {step: (caller's init scripts, callee's, what the callee's early connection shows meanwhile)}.
HOLD = "await new Promise((r) => setTimeout(r, 2500));"


def local_description_held(state: str) -> str:
    """An init script: setLocalDescription in that signaling state waits 2.5 s first."""
    return f"""
const setLocal = RTCPeerConnection.prototype.setLocalDescription;
RTCPeerConnection.prototype.setLocalDescription = async function (...args) {{
  if (this.signalingState === "{state}") {HOLD}
  return setLocal.apply(this, args);
}};"""


OFFER_LEAVES_LATE = local_description_held("stable")
# (Candidates wait for it, as the browser's own operations chain makes them.)
OFFER_APPLIED_LATE = f"""
const setRemote = RTCPeerConnection.prototype.setRemoteDescription;
const addCandidate = RTCPeerConnection.prototype.addIceCandidate;
RTCPeerConnection.prototype.setRemoteDescription = function (description) {{
  if (!description || description.type !== "offer" || this.signalingState !== "stable") {{
    return setRemote.apply(this, [description]);
  }}
  this.held = (async () => {{ {HOLD} return setRemote.apply(this, [description]); }})();
  return this.held;
}};
RTCPeerConnection.prototype.addIceCandidate = async function (...args) {{
  await (this.held || null);
  return addCandidate.apply(this, args);
}};"""
ANSWER_MADE_LATE = local_description_held("have-remote-offer")
# The server's "joined" (and everything after it, in order) reaches the page 1.2 s late: the
# devices are open by then.
JOINED_LATE = """
const onmessage = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
Object.defineProperty(WebSocket.prototype, "onmessage", {
  get() { return onmessage.get.call(this); },
  set(handler) {
    let chain = Promise.resolve(), release = 0;
    onmessage.set.call(this, (ev) => {
      try { if (JSON.parse(ev.data).type === "joined") release = Date.now() + 1200; } catch {}
      chain = chain.then(async () => {
        const wait = release - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        handler.call(this, ev);
      });
    });
  },
});"""
NO_OFFER_YET = "window.traverseCall.earlyList()[0].pc === null"
OFFER_BEING_APPLIED = (
    "(p => p && p.pc && !p.pc.remoteDescription)([...window.traverseCall.early.values()][0])"
)
EARLY_STEPS = {
    # The caller's early offer reaches the callee after the answer.
    "before the offer comes": ([OFFER_LEAVES_LATE], [], NO_OFFER_YET),
    # The callee's page is still applying the offer (its transceivers not made yet) ...
    "while the offer is applied": ([], [OFFER_APPLIED_LATE], OFFER_BEING_APPLIED),
    # ... and its devices are open before the server says it joined.
    "while the offer is applied, devices first": (
        [],
        [OFFER_APPLIED_LATE, JOINED_LATE],
        OFFER_BEING_APPLIED,
    ),
    # The callee's page has the offer and is making its answer.
    "while the answer is made": (
        [],
        [ANSWER_MADE_LATE],
        "(e => e.pc && e.pc.signaling === 'have-remote-offer')(window.traverseCall.earlyList()[0])",
    ),
}
ONE_PEER = "[...window.traverseCall.peers.values()][0]"


@pytest.mark.parametrize("step", list(EARLY_STEPS))
def test_an_answer_at_any_step_of_the_early_negotiation_gets_the_media_through(
    services, browser, coturn, alice, bob, password, step
):
    """CI found these: the callee answered (on a busy machine) while the early negotiation was
    still under way, and both pages said connected with nothing received.
    - Before the caller's early offer reached it: its page started a connection of its own, the
      offer then arrived on it, and the media went out on transceivers that the offer never
      negotiated. The page that answered waits for that offer now.
    - While its page applied that offer: the answer promoted the early connection before it had
      its transceivers, so nothing was attached, and the answer it then made was receive-only
      (the offer was no longer "early"). The answer is now decided by the offer it answers.
    Each step is held 2.5 s, and the callee answers inside it."""
    base, a, (b,) = pages(services, browser, coturn, password, "bob")
    for page, scripts in zip((a, b), EARLY_STEPS[step][:2], strict=True):
        for script in scripts:
            page.add_init_script(script)
    if EARLY_STEPS[step][1]:  # they apply from the next page load on
        b.reload()
        b.wait_for_selector("#conn-status:has-text('Online')")
    held = EARLY_STEPS[step][2]
    dial(a, "bob")
    wait_until(b, RINGING, timeout=10_000)
    wait_until(b, "window.traverseCall && window.traverseCall.earlyList().length === 1")
    wait_until(b, held, timeout=10_000)
    b.click("#ringer [data-action=accept-video]")
    for page in (a, b):
        try:
            wait_until(page, "window.traverseCall.inboundBytes().then(n => n > 0)", timeout=20_000)
        except TimeoutError as e:
            raise AssertionError([media_state(p) for p in (a, b)]) from e
        assert page.evaluate("window.traverseCall.connections") == 1
        # Audio and video, each negotiated once, both ways: nothing added on the side.
        transceivers = media_state(page)["peers"][0]["transceivers"]
        assert [(t["current"], t["sends"]) for t in transceivers] == [
            ("sendrecv", "audio"),
            ("sendrecv", "video"),
        ], transceivers
    # The server hears it from the pages' connection report, a moment after the media.
    wait_for(lambda: Call.objects.get().state == "connected", 10, what="the call connected")
