"""With CALL_EARLY_ICE off, nothing is negotiated before the answer: the ringing page mounts no
call screen, the caller's page meets no ringing device, and answering loads the call page, which
negotiates from there."""

from __future__ import annotations

import pytest

from tests.conftest import loopback_relay
from tests.e2e.conftest import (
    CONNECTED,
    RINGING,
    dial,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SERVICES_ENV = {"CALL_EARLY_ICE": "false", "RELAYS_PER_CALLER": "1"}


def test_nothing_is_negotiated_before_the_answer(services, browser, coturn, alice, bob, password):
    base = services["base"]
    loopback_relay(coturn, "late-relay", rig=True)
    assert sweep_through_worker() == {"late-relay": "up"}
    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)
    dial(a, "bob")
    wait_until(b, RINGING, timeout=10_000)
    wait_until(a, "window.traverseCall.joined")
    b.wait_for_timeout(2000)
    assert b.evaluate("window.traverseRinger.mounted") is None
    assert b.locator(".call-overlay").count() == 0
    assert a.evaluate("window.traverseCall.early.size") == 0
    assert a.evaluate("window.traverseCall.peerList()") == []
    b.click("#ringer [data-action=accept-video]")
    b.wait_for_url("**/calls/*/?answer=1*")  # the call page loads
    for page in (a, b):
        wait_until(page, CONNECTED, timeout=20_000)
        assert page.evaluate("window.traverseCall.connections") == 1
