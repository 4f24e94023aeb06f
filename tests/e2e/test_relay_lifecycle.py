"""Relays over a call's life, in real Chromium through real coturn: a call that outlives its
credentials keeps its relay (the page refreshes them, and an ICE restart after the first ones
expired allocates with the fresh ones on the same relay), and a relay that fails for a caller
is withdrawn for everyone once the report's re-probe finds it down."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from calls.models import AssignedRelay, Call
from relays.models import ClientRelayRtt, CredentialGrant, Relay, RelayStatus
from tests.conftest import loopback_relay
from tests.e2e.conftest import (
    CONNECTED,
    dial_and_answer,
    sign_in,
    sweep_through_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TTL = 31  # seconds: the page refreshes at max(30 s, 0.8 × TTL), before this
SERVICES_ENV = {"TURN_CREDENTIAL_TTL": str(TTL), "RELAYS_PER_CALLER": "2"}


def test_a_call_that_outlives_its_credentials_keeps_its_relay(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base = services["base"]
    relay, _server = loopback_relay(coturn, "ttl-relay", rig=True)
    assert sweep_through_worker() == {"ttl-relay": "up"}
    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)
    dial_and_answer(a, b, "bob")
    first = {}
    for page in (a, b):
        wait_until(page, "window.traverseCall.report !== null")
        first[page] = page.evaluate("window.traverseCall.ice")
        assert [r["name"] for r in first[page]["relays"]] == ["ttl-relay"]
    # Both sides' relays are recorded on their participations.
    call = Call.objects.get()
    assert set(
        AssignedRelay.objects.filter(participant__call=call).values_list("relay__name", flat=True)
    ) == {"ttl-relay"}
    assert AssignedRelay.objects.filter(participant__call=call).count() == 2

    # The page refreshes its credentials before they expire: the same grant, extended.
    for page in (a, b):
        wait_until(
            page,
            "(since) => window.traverseCall.ice.expiresAt !== since",
            arg=first[page]["expiresAt"],
            timeout=(TTL + 15) * 1000,
        )
        fresh = page.evaluate("window.traverseCall.ice")
        assert fresh["grant"] == first[page]["grant"]
        assert [r["name"] for r in fresh["relays"]] == ["ttl-relay"]
    assert CredentialGrant.objects.filter(user=alice).count() == 1

    # Past the first credentials' expiry, an ICE restart allocates again, with the fresh ones,
    # on the same relay (coturn refuses an expired username: 401).
    expired_at = datetime.fromisoformat(first[a]["expiresAt"]).timestamp()
    time.sleep(max(0.0, expired_at - time.time() + 2))
    before = a.evaluate("window.traverseCall.selectedPair()")
    a.evaluate("window.traverseCall.pc.restartIce()")
    started = time.perf_counter()
    after = wait_until(
        a,
        "async (old) => { const p = await window.traverseCall.selectedPair();"
        " return p && p.localCandidate !== old"
        " && window.traverseCall.pc.connectionState === 'connected' && p; }",
        arg=before["localCandidate"],
        timeout=30_000,
    )
    restart_ms = (time.perf_counter() - started) * 1000
    assert after["connectionType"] == "relay" and after["relayUrl"] in relay.urls, after
    for page in (a, b):
        assert page.evaluate(CONNECTED)
        assert page.evaluate("window.traverseCall.errors") == []
    # Each page said how long the relay took to give a candidate.
    assert ClientRelayRtt.objects.filter(relay=relay, kind="gather").exists()
    reported = a.evaluate("window.traverseCall.gatherReported")
    assert reported and set(reported) <= set(relay.urls), reported
    e2e_figures.append(
        f"ICE restart {TTL + 2}+ s into a call, after its first credentials expired: "
        f"a new relay candidate on the same relay, connected in {restart_ms:.0f} ms"
    )


def test_a_relay_a_caller_reports_failing_is_withdrawn_for_everyone(
    services, browser, coturn, alice, bob, password, e2e_figures
):
    base = services["base"]
    good, _ = loopback_relay(coturn, "good-relay", rig=True)
    bad, bad_server = loopback_relay(coturn, "bad-relay", rig=True)
    assert sweep_through_worker() == {"good-relay": "up", "bad-relay": "up"}
    bad_server.stop()  # it dies between sweeps: only a caller can tell, until the next one
    a = sign_in(browser, base, "alice", password)
    b = sign_in(browser, base, "bob", password)
    started = time.monotonic()
    dial_and_answer(a, b, "bob")
    handed = {r["name"] for r in a.evaluate("window.traverseCall.ice.relays")}
    assert handed == {"good-relay", "bad-relay"}
    # The page's allocation on it fails, it reports, the worker probes it again at once.
    wait_until(a, "window.traverseCall.relayFailuresReported > 0", timeout=30_000)
    deadline = time.monotonic() + 60
    while Relay.objects.get(pk=bad.pk).status != RelayStatus.DOWN:
        assert time.monotonic() < deadline, "the reported relay was not withdrawn"
        time.sleep(0.2)
    withdrawn_s = time.monotonic() - started
    assert Relay.objects.get(pk=good.pk).status == RelayStatus.UP
    # The call itself went through the good relay; the next caller isn't handed the bad one.
    for page in (a, b):
        pair = wait_until(page, "window.traverseCall.selectedPair()", timeout=10_000)
        assert pair["relayUrl"] in good.urls, pair
    again = b.evaluate(
        "(async () => (await (await fetch('/api/v1/ice-servers/')).json()).relays)()"
    )
    assert [r["name"] for r in again] == ["good-relay"]
    assert bad.events.filter(kind="reported").exists()
    e2e_figures.append(
        f"a relay that died between sweeps: withdrawn {withdrawn_s:.1f} s after the call was "
        "dialled (the page's failed allocation, its report, the worker's re-probes)"
    )
