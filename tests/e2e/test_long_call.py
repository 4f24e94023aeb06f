"""Calls that last: two Chromium pages hold a relayed call for minutes (E2E_LONG_CALL_SECONDS,
default 180, never under 60 in CI) while a third person's home page sits idle. Media keeps
flowing, no peer connection is renegotiated, no signaling socket closes, and the call record
is not rewritten.

The defect this guards against: every idle signaling socket died after 5-6 s (redis-py's read
timeout under channels-redis' 5 s BZPOPMIN), and each reconnect renegotiated the call: 6 media
restarts in a 47 s call. Every other browser test was over in seconds and never saw it.
"""

from __future__ import annotations

import os
import time

import pytest

from calls.models import Call, ParticipantState
from tests.conftest import IN_CI, loopback_relay
from tests.e2e.conftest import (
    dial_and_answer,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SECONDS = float(os.environ.get("E2E_LONG_CALL_SECONDS", "180"))
if IN_CI:
    SECONDS = max(60.0, SECONDS)
SAMPLE_EVERY = 15.0


def test_a_call_of_several_minutes_never_drops(
    services, browser, coturn, alice, bob, charlie, password, e2e_figures
):
    base = services["base"]
    loopback_relay(coturn, "long-relay", rig=True)  # browsers meet through it: see test_relay_call
    assert sweep_through_worker() == {"long-relay": "up"}

    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)
    idle = sign_in(browser, base, "charlie", password)  # a home page nobody calls
    dial_and_answer(a, b, "bob")
    for page in (a, b):
        wait_until(page, "window.traverseCall.report !== null")
    call = Call.objects.get()
    joined_at = {p.user_id: p.joined_at for p in call.participants.all()}

    started = time.monotonic()
    last = {page: 0 for page in (a, b)}
    samples = 0
    while (elapsed := time.monotonic() - started) < SECONDS:
        time.sleep(min(SAMPLE_EVERY, max(0.1, SECONDS - elapsed)))
        for page in (a, b):
            state = page.evaluate(
                "async () => ({status: window.traverseCall.status,"
                " connections: window.traverseCall.connections,"
                " sessions: window.traverseCall.signalingSessions,"
                " drops: window.traverseCall.signalingDrops || 0,"
                " bytes: await window.traverseCall.inboundBytes()})"
            )
            at = f"after {time.monotonic() - started:.0f} s"
            assert state["status"] == "connected", (at, state)
            assert state["connections"] == 1, (at, state)  # never renegotiated
            assert state["sessions"] == 1 and state["drops"] == 0, (at, state)  # no socket closed
            assert state["bytes"] > last[page], (at, state, last[page])  # media still flows
            last[page] = state["bytes"]
        home = idle.evaluate(
            "({welcomes: window.traverseHome.welcomes, drops: window.traverseHome.drops})"
        )
        assert home == {"welcomes": 1, "drops": 0}, home
        assert "Online" in idle.inner_text("#conn-status")
        samples += 1
    held = time.monotonic() - started

    call.refresh_from_db()
    assert call.state == "connected"
    for p in call.participants.all():
        assert p.state == ParticipantState.JOINED and p.joined_at == joined_at[p.user_id]
        assert p.connection_type == "relay"
    a.click("#hangup")
    for page in (a, b):
        page.wait_for_url("**/details/", timeout=10_000)
    for page in (a, b, idle):
        page.context.close()
    e2e_figures.append(
        f"long call held {held:.0f} s through the relay: {samples} samples, 1 peer connection "
        f"each, 0 signaling drops, media received {last[a] / held / 1000:.0f} / "
        f"{last[b] / held / 1000:.0f} kB/s"
    )
