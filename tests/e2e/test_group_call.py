"""A group call in three real Chromium pages through a real coturn: everyone connected to
everyone (one peer connection per pair, one tile per person), an invitation above the cap
refused, chat on every page, and a screen share that the others see."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from calls.models import Call, ChatMessage, Participant
from tests.conftest import loopback_relay
from tests.e2e.conftest import (
    CONNECTED,
    RINGING,
    dial_and_answer,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A cap of 3 for this module: the fourth invitation is refused.
SERVICES_ENV = {"CALL_MAX_PARTICIPANTS": "3", "RELAYS_PER_CALLER": "1"}
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))
ALL_CONNECTED = (
    "window.traverseCall && window.traverseCall.peerList().length === 2"
    " && window.traverseCall.peerList().every((p) => p.connected && p.path)"
)


def test_three_people_in_a_mesh_with_chat_and_screen_share(
    services, browser, coturn, alice, bob, charlie, password, django_user_model, e2e_figures
):
    base = services["base"]
    loopback_relay(coturn, "group-relay", rig=True)
    assert sweep_through_worker() == {"group-relay": "up"}
    django_user_model.objects.create_user("dave", password=password)
    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)
    c = sign_in(browser, base, "charlie", password)
    dial_and_answer(a, b, "bob")

    # alice invites charlie from the call page; charlie answers from his ringing banner.
    a.fill("#invite-username", "charlie")
    a.click("#invite-form button[type=submit]")
    wait_until(c, RINGING, timeout=10_000)
    wait_until(b, "document.getElementById('invites').textContent.includes('@charlie')")
    c.click("#ringer [data-action=accept-video]")
    c.wait_for_url("**/calls/*/*")  # the screen mounted while it rang shows: no page load
    try:
        for page in (a, b, c):
            wait_until(page, ALL_CONNECTED, timeout=30_000)
    except TimeoutError:  # what each page's peer connections were doing
        for page in (a, b, c):
            print(page.evaluate("JSON.stringify(window.traverseCall.peerList())"))
        raise
    for page, others in ((a, {"Bob", "Charlie"}), (b, {"Alice", "Charlie"}), (c, {"Alice", "Bob"})):
        peers = page.evaluate("window.traverseCall.peerList()")
        assert {p["name"] for p in peers} == others
        assert all(p["path"] == "relay" for p in peers), peers  # relay-only pages
        assert page.locator(".tile:not([hidden])").count() == 2
        wait_until(page, "window.traverseCall.inboundBytes()")
    # Each page holds one peer connection per other person, each connected once.
    assert [p.evaluate("window.traverseCall.connections") for p in (a, b, c)] == [2, 2, 2]

    # A fourth person is refused: the cap is 3.
    b.fill("#invite-username", "dave")
    b.click("#invite-form button[type=submit]")
    error = wait_until(b, "window.traverseCall.inviteError")
    assert error["code"] == "call_full" and "at most 3" in error["message"]
    assert b.is_visible("#invites .errors")
    call = Call.objects.get()
    assert not Participant.objects.filter(call=call, user__username="dave").exists()

    # Chat reaches every page, and is stored with the call.
    c.fill("#chat-text", "can everyone see my screen?")
    c.press("#chat-text", "Enter")
    for page in (a, b, c):
        wait_until(page, "window.traverseCall.chat.length === 1")
        assert "can everyone see my screen?" in page.inner_text("#chat-log")
    assert list(ChatMessage.objects.values_list("text", flat=True)) == [
        "can everyone see my screen?"
    ]

    # charlie shares his screen: the others are told, and their tile of charlie shows it.
    charlie_id = c.evaluate("window.traverseCall.me")
    before = {
        p: p.evaluate("(u) => window.traverseCall.inboundVideo(u)", charlie_id) for p in (a, b)
    }
    c.click("#screen")
    wait_until(c, "window.traverseCall.sharing === true", timeout=10_000)
    screen = c.evaluate("window.traverseCall.screenTrack.getSettings()")
    for page in (a, b):
        wait_until(
            page,
            f"window.traverseCall.peerList().some((p) => p.user === {charlie_id} && p.media && p.media.screen)",
        )
        assert page.is_visible(f".tile[data-user='{charlie_id}'] .flag-screen")
        shown = wait_until(
            page,
            f"""async () => {{
                const v = await window.traverseCall.inboundVideo({charlie_id});
                return v && v.width === {screen["width"]} && v.height === {screen["height"]}
                    && v.frames > {before[page]["frames"] if before[page] else 0} ? v : null;
            }}""",
            timeout=15_000,
        )
        assert shown["width"] == screen["width"]
    e2e_figures.append(
        f"group call: 3 pages, {3 * 2} peer connections connected through the relay; "
        f"screen share {screen['width']}x{screen['height']} decoded by both others"
    )

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for page, name in ((a, "group-call"), (c, "group-call-sharing")):
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    a.set_viewport_size({"width": 390, "height": 844})
    a.wait_for_timeout(300)
    assert a.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    a.screenshot(path=str(SCREENSHOTS / "group-call-390.png"), full_page=True)

    # charlie leaves: alice and bob go on together.
    c.click("#hangup")
    for page in (a, b):
        wait_until(page, "window.traverseCall.peerList().length === 1")
        wait_until(page, CONNECTED)
    assert Call.objects.get().state != "ended"
