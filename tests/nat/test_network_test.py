"""The network test (/network-test/) in every network type of the NAT lab: its verdict is the
one the network deserves. Expected values written before the runs (issue 11)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relays.models import NetworkTestResult
from tests.e2e.conftest import sweep_through_worker, wait_until
from tests.nat.lab import APD, EIM, OPEN, SECOND_ADDRESS, SERVER_ADDRESS, UDP_BLOCKED
from tests.nat.test_nat_matrix import lab_relay, sign_in_lab

SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))
pytestmark = [pytest.mark.e2e, pytest.mark.nat, pytest.mark.django_db(transaction=True)]

EXPECTED = {
    OPEN: (OPEN, "direct", "Direct calls should work from this network."),
    EIM: (EIM, "direct", "Direct calls should work from this network."),
    APD: (APD, "relay", "Calls from here will need a relay."),
    # The lab's UDP-blocked firewall lets TCP out only to 80 and 443 (tests/nat/lab.py).
    UDP_BLOCKED: (
        UDP_BLOCKED,
        "tls-443",
        "Your network lets only port 443 out: calls will use TURN over TLS on 443.",
    ),
}


def two_lab_relays(coturn, certificate) -> None:
    """Two relays on the lab's internet, one per address: two STUN servers to compare a NAT's
    mappings against."""
    lab_relay(coturn, certificate, name="lab-a", host=SERVER_ADDRESS)
    lab_relay(coturn, certificate, name="lab-b", host=SECOND_ADDRESS)
    assert sweep_through_worker() == {"lab-a": "up", "lab-b": "up"}


@pytest.mark.parametrize("network_type", list(EXPECTED))
def test_network_test_verdict(
    network_type,
    nat_lab,
    lab_platform,
    lab_browser,
    lab_certificate,
    coturn,
    alice,
    e2e_figures,
):
    kind, verdict, sentence = EXPECTED[network_type]
    two_lab_relays(coturn, lab_certificate)
    side = nat_lab.side(1, network_type)
    page = sign_in_lab(lab_browser(side), lab_platform["base"], "alice")
    page.click("#network-test-link")
    page.wait_for_url("**/network-test/")
    page.click("#nettest-start")
    state = wait_until(
        page,
        "window.traverseNetworkTest && !window.traverseNetworkTest.running"
        " && window.traverseNetworkTest",
        timeout=40_000,
    )
    assert state["error"] is None, state
    result = state["result"]
    e2e_figures.append(
        f"network test in {network_type}: {result['networkType']} → {result['verdict']}; "
        + "; ".join(
            f"{r['url']} {str(r['ms']) + ' ms' if r['ok'] else 'failed'}"
            for r in result["details"]["relays"]
        )
        + f"; loopback {result['details']['loopback']}"
    )
    assert (result["networkType"], result["verdict"]) == (kind, verdict), result
    assert page.inner_text("#nettest-verdict") == sentence
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"network-test-{network_type}.png"), full_page=True)
    stored = NetworkTestResult.objects.get(pk=result["id"])
    assert stored.user.username == "alice"
    assert (stored.network_type, stored.verdict) == (kind, verdict)
    # The network is the /24 the server saw the page come from (the home's public address).
    assert stored.network == f"{side.public_address.rsplit('.', 1)[0]}.0/24"
    if network_type != UDP_BLOCKED:
        assert result["details"]["loopback"]["ok"] is True
