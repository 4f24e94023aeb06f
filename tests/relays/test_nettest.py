"""The network test's verdict (relays.nettest, no Django) and its API: what is stored, for whom,
for how long, and the errors. The browser side runs in the NAT lab (tests/nat)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from relays.ice_urls import parse_ice_url
from relays.models import NetworkTestResult
from relays.nettest import Facts, Mapping, NetworkType, RelayCheck, Verdict, verdict
from relays.services.pruning import relay_prune_history

UDP = "turn:203.0.113.10:3478?transport=udp"
TCP = "turn:203.0.113.10:3478?transport=tcp"
TLS = "turns:203.0.113.10:5349?transport=tcp"
TLS_443 = "turns:203.0.113.10:443?transport=tcp"


def relays(*ok: str, failed: tuple[str, ...] = ()) -> list[RelayCheck]:
    return [RelayCheck(parse_ice_url(u), True, 20.0) for u in ok] + [
        RelayCheck(parse_ice_url(u), False) for u in failed
    ]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(  # the browser's own address is the one the server saw: no NAT
            Facts(
                host_addresses=["198.51.100.7"],
                client_ip="198.51.100.7",
                stun_servers=2,
                relays=relays(UDP, TCP),
            ),
            (NetworkType.OPEN, Verdict.DIRECT),
            id="open",
        ),
        pytest.param(  # one mapping though two servers were asked (Chromium drops the twin)
            Facts(
                mappings=[Mapping("stun:a", "198.51.100.7", 40000)],
                host_addresses=["10.0.0.2"],
                client_ip="198.51.100.7",
                stun_servers=2,
                relays=relays(UDP),
            ),
            (NetworkType.ENDPOINT_INDEPENDENT, Verdict.DIRECT),
            id="endpoint-independent",
        ),
        pytest.param(
            Facts(
                mappings=[
                    Mapping("stun:a", "198.51.100.7", 40000, "10.0.0.2:5000"),
                    Mapping("stun:b", "198.51.100.7", 61002, "10.0.0.2:5000"),
                ],
                stun_servers=2,
                relays=relays(UDP),
            ),
            (NetworkType.ADDRESS_AND_PORT_DEPENDENT, Verdict.RELAY),
            id="address-and-port-dependent",
        ),
        pytest.param(
            Facts(stun_servers=2, relays=relays(TCP, TLS, failed=(UDP,))),
            (NetworkType.UDP_BLOCKED, Verdict.TCP),
            id="udp-blocked",
        ),
        pytest.param(
            Facts(stun_servers=2, relays=relays(TLS_443, failed=(UDP, TCP, TLS))),
            (NetworkType.UDP_BLOCKED, Verdict.TLS_443),
            id="only-443",
        ),
        pytest.param(
            Facts(
                mappings=[Mapping("stun:a", "198.51.100.7", 40000)],
                stun_servers=1,
                relays=relays(UDP),
            ),
            (NetworkType.UNKNOWN, Verdict.MAYBE),
            id="one-stun-server-cannot-tell",
        ),
        pytest.param(
            Facts(stun_servers=2, relays=relays(failed=(UDP, TCP))),
            (NetworkType.UDP_BLOCKED, Verdict.NONE),
            id="nothing-gets-out",
        ),
        pytest.param(
            Facts(), (NetworkType.UNKNOWN, Verdict.UNTESTED), id="nothing-to-test-against"
        ),
    ],
)
def test_verdict(facts, expected):
    assert verdict(facts) == expected


BODY = {
    "mappings": [
        {"server": "stun:203.0.113.10:3478", "address": "203.0.113.3", "port": 40000, "base": ""}
    ],
    "hostAddresses": ["10.0.1.2"],
    "stunServers": 2,
    "relays": [{"url": UDP, "ok": True, "ms": 61.0}, {"url": TCP, "ok": True, "ms": 62.5}],
    "loopback": {"ok": True, "ms": 1.2},
}


@pytest.fixture
def client_of():
    def make(user):
        c = APIClient(REMOTE_ADDR="198.51.100.23")
        c.force_authenticate(user)
        return c

    return make


@pytest.mark.django_db
def test_a_result_is_stored_with_the_servers_verdict_and_network(client_of, alice):
    res = client_of(alice).post("/api/v1/network-tests/", BODY, format="json")
    assert res.status_code == 201, res.json()
    body = res.json()
    assert body["networkType"] == "endpoint-independent"
    assert body["verdict"] == "direct"
    assert body["sentence"] == "Direct calls should work from this network."
    assert body["network"] == "198.51.100.0/24"  # where the request came from, not the body
    row = NetworkTestResult.objects.get(pk=body["id"])
    assert (row.user, row.udp, row.details["loopback"]) == (alice, True, {"ok": True, "ms": 1.2})


@pytest.mark.django_db
def test_each_user_sees_only_their_own_results(client_of, alice, bob):
    client_of(alice).post("/api/v1/network-tests/", BODY, format="json")
    assert len(client_of(alice).get("/api/v1/network-tests/").json()) == 1
    assert client_of(bob).get("/api/v1/network-tests/").json() == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mappings": [{"server": "x", "address": "not-an-ip", "port": 1}]}, "mappings"),
        ({"relays": [{"url": UDP, "ok": True, "ms": -1}]}, "relays"),
        ({"stunServers": 99}, "stunServers"),
        ({"verdict": "direct"}, "verdict"),  # the client does not decide
        ({"relays": [{"url": UDP, "ok": True}] * 25}, "relays"),
        ({"relays": [{"url": "stun:203.0.113.10:3478", "ok": True}]}, "relays"),
        ({"relays": [{"url": "not a url", "ok": True}]}, "relays"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_stored(client_of, alice, change, field):
    res = client_of(alice).post("/api/v1/network-tests/", {**BODY, **change}, format="json")
    assert res.status_code == 400
    assert field in res.json()["error"]["fields"]
    assert not NetworkTestResult.objects.exists()


@pytest.mark.django_db
def test_strangers_are_refused():
    res = APIClient().post("/api/v1/network-tests/", BODY, format="json")
    assert res.status_code in (401, 403)
    assert not NetworkTestResult.objects.exists()


@pytest.mark.django_db
@pytest.mark.ratelimit
def test_runs_are_rate_limited(client_of, alice, settings):
    settings.NETWORK_TEST_RATE = "2/h"
    c = client_of(alice)
    assert [
        c.post("/api/v1/network-tests/", BODY, format="json").status_code for _ in range(3)
    ] == [
        201,
        201,
        429,
    ]
    res = c.post("/api/v1/network-tests/", BODY, format="json")
    assert res.json()["error"]["code"] == "network_test_limited"
    assert int(res.headers["Retry-After"]) > 0
    assert NetworkTestResult.objects.count() == 2


@pytest.mark.django_db
def test_results_are_pruned_after_the_retention_window_and_go_with_the_user(
    client_of, alice, settings
):
    settings.NETWORK_TEST_RETENTION_DAYS = 30
    c = client_of(alice)
    old = c.post("/api/v1/network-tests/", BODY, format="json").json()["id"]
    new = c.post("/api/v1/network-tests/", BODY, format="json").json()["id"]
    NetworkTestResult.objects.filter(pk=old).update(created_at=timezone.now() - timedelta(days=31))
    assert relay_prune_history()["network_tests_deleted"] == 1
    assert list(NetworkTestResult.objects.values_list("pk", flat=True)) == [new]
    alice.delete()
    assert not NetworkTestResult.objects.exists()


@pytest.mark.django_db
def test_the_page_plans_two_stun_servers_and_shows_earlier_results(client, alice, password):
    client.force_login(alice)
    NetworkTestResult.objects.create(
        user=alice, network="198.51.100.0/24", network_type="udp-blocked", verdict="tcp", udp=False
    )
    page = client.get("/network-test/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="nettest-plan"' in text and "/api/v1/network-tests/" in text
    assert "Your network blocks UDP" in text
    client.logout()
    assert client.get("/network-test/").status_code == 302  # sign in first


@pytest.mark.django_db
def test_allocation_times_feed_the_relays_figure_for_that_network(client_of, alice):
    """The network test's times count as the call page's gather reports do: for relays this
    user was handed, on the network the request came from."""
    from relays.models import ClientRelayRtt
    from relays.services import ice_servers_issue
    from tests.conftest import up_relay

    relay = up_relay("measured", urls=[UDP])
    assert ice_servers_issue(user=alice)["relays"][0]["name"] == "measured"
    body = {
        **BODY,
        "relays": [{"url": UDP, "ok": True, "ms": 42.0}, {"url": TLS, "ok": True, "ms": 9.0}],
    }
    assert client_of(alice).post("/api/v1/network-tests/", body, format="json").status_code == 201
    (figure,) = ClientRelayRtt.objects.all()  # TLS was never handed to alice: not taken
    assert (figure.relay, figure.network, figure.kind) == (relay, "198.51.100.0/24", "gather")
    assert figure.rtt_ms == pytest.approx(42.0)
