"""Direct where possible, relayed where necessary: two browsers in two home networks call each
other through the real UI (no forced relay), and the path each takes is the one the NATs allow.

The table below was written before the runs (issue 11). Why two cells are `relay`: Linux
conntrack filters inbound packets by address and port on every NAT here. A symmetric-like NAT
(`--random-fully`) sends its side's checks from a port the other side never learned, so the
other NAT drops them; and the other side's checks go to a port mapped only towards the STUN
server. Only a side with no NAT (`open`) takes such a check in and answers it.
"""

from __future__ import annotations

import time

import pytest

from calls.models import Call, ConnectionType
from tests.e2e.conftest import CONNECTED, answer, dial, sweep_through_worker, wait_until
from tests.nat.lab import APD, EIM, OPEN, SERVER_ADDRESS, UDP_BLOCKED

pytestmark = [pytest.mark.e2e, pytest.mark.nat, pytest.mark.django_db(transaction=True)]

DIRECT, RELAY, RELAY_TLS = "direct", "relay", "relay over TLS on 443"

EXPECTED = {
    (OPEN, OPEN): DIRECT,
    (OPEN, EIM): DIRECT,
    (OPEN, APD): DIRECT,
    (OPEN, UDP_BLOCKED): RELAY_TLS,
    (EIM, OPEN): DIRECT,
    (EIM, EIM): DIRECT,
    (EIM, APD): RELAY,
    (EIM, UDP_BLOCKED): RELAY_TLS,
    (APD, OPEN): DIRECT,
    (APD, EIM): RELAY,
    (APD, APD): RELAY,
    (APD, UDP_BLOCKED): RELAY_TLS,
}


def sign_in_lab(browser, base: str, username: str):
    """The user's home page, signed in; the privacy switch stays off (direct calls allowed).
    The session is made here rather than through the sign-in form: the form's per-username
    rate limit (10/min) would refuse the lab's many sign-ins of one user (the form has tests of
    its own)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    context = browser.new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base + "/"}]
    )
    page = context.new_page()
    page.on("pageerror", lambda e: print(f"[{username}] pageerror: {e}"))
    page.goto(base + "/")
    assert not page.is_checked("#force-relay")
    page.wait_for_selector("#conn-status:has-text('Online')")
    return page


def lab_relay(coturn, certificate, *, name="lab-relay", host=SERVER_ADDRESS):
    """A relay on the lab's internet: TURN over UDP and TCP on a port of its own, and over TLS
    on 443. Registered, and swept up by the worker."""
    from relays.services import relay_create

    server = coturn(
        host=host, allow_loopback_peers=False, tls=True, tls_port=443, certificate=certificate
    )
    relay_create(
        name=name,
        urls=server.urls,
        secret=server.secret,
        allow_private=True,
        private_reason="the NAT lab's documentation address (203.0.113.0/24)",
    )
    return server


def agreed(call_id, pages: dict, timeout: float = 15.0) -> tuple[dict, dict]:
    """What each page's getStats() shows and what the call record holds, once they agree (or
    the last look, after `timeout`). The path at "connected" can change right after (a
    peer-reflexive remote candidate resolves to host or srflx when its own candidate arrives;
    ICE can move to a better pair): the page reports again, and the record follows."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {
            name: wait_until(page, "window.traverseCall.selectedPair()", timeout=10_000)
            for name, page in pages.items()
        }
        parts = {p.user.username: p for p in Call.objects.get(pk=call_id).participants.all()}
        if all(parts[n].connection_type == seen[n]["connectionType"] for n in pages):
            return seen, parts
        if time.monotonic() > deadline:
            return seen, parts
        time.sleep(0.25)


@pytest.mark.parametrize(
    ("caller_type", "callee_type"), list(EXPECTED), ids=[f"{a}-calls-{b}" for a, b in EXPECTED]
)
def test_call_takes_the_path_the_nats_allow(
    caller_type,
    callee_type,
    nat_lab,
    lab_platform,
    lab_browser,
    lab_certificate,
    coturn,
    alice,
    bob,
    e2e_figures,
):
    expected = EXPECTED[(caller_type, callee_type)]
    base = lab_platform["base"]
    lab_relay(coturn, lab_certificate)
    assert sweep_through_worker() == {"lab-relay": "up"}
    caller_side, callee_side = nat_lab.side(1, caller_type), nat_lab.side(2, callee_type)
    a = sign_in_lab(lab_browser(caller_side), base, "alice")
    b = sign_in_lab(lab_browser(callee_side), base, "bob")

    t0 = time.perf_counter()
    dial(a, "bob")
    answer(b)
    for page in (a, b):
        wait_until(page, CONNECTED, timeout=30_000)
    dial_to_connected = round((time.perf_counter() - t0) * 1000)

    call_id = a.evaluate("window.traverseCall.id")
    seen, parts = agreed(call_id, {"alice": a, "bob": b})
    e2e_figures.append(
        f"NAT lab {caller_type} calls {callee_type}: {seen['alice']['connectionType']} "
        f"({seen['alice']['localType']}/{seen['alice']['remoteType']}"
        f"{', ' + seen['alice']['relayProtocol'] if seen['alice']['relayProtocol'] else ''} | "
        f"{seen['bob']['localType']}/{seen['bob']['remoteType']}"
        f"{', ' + seen['bob']['relayProtocol'] if seen['bob']['relayProtocol'] else ''}), "
        f"dial to connected {dial_to_connected} ms"
    )

    # The call record states what getStats() shows, on both sides.
    for name in ("alice", "bob"):
        assert parts[name].connection_type == seen[name]["connectionType"], (name, seen)
    call = Call.objects.prefetch_related("participants").get(pk=call_id)
    if expected == DIRECT:
        # 0 needless relays: neither side's pair uses one.
        for name in ("alice", "bob"):
            assert seen[name]["connectionType"] != ConnectionType.RELAY, (name, seen)
            assert parts[name].relay_id is None
        assert call.path_summary == "direct"
    else:
        for name in ("alice", "bob"):
            assert seen[name]["connectionType"] == ConnectionType.RELAY, (name, seen)
        assert call.path_summary == "relayed"
    if expected == RELAY_TLS:
        # The UDP-blocked side (the callee) reaches its relay over TLS on 443.
        assert seen["bob"]["localType"] == "relay", seen
        assert seen["bob"]["relayProtocol"] == "tls", seen
        assert parts["bob"].relay_url.startswith("turns:") and ":443?" in parts["bob"].relay_url
