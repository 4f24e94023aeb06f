"""GET /api/v1/ice-servers/: the DESIGN.md shape, with credentials coturn accepts."""

import asyncio
import base64
import hashlib
import hmac
import time

import pytest
from django.utils import timezone

from relays.ice_urls import parse_ice_url
from relays.models import CredentialGrant, Relay, RelayStatus
from relays.probes import ProbePlan, probe_relay
from relays.services import relay_sweep

pytestmark = pytest.mark.django_db
URL = "/api/v1/ice-servers/"


@pytest.mark.smoke
def test_anonymous_callers_get_a_json_error(client):
    response = client.get(URL)
    assert response.status_code in (401, 403)
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.smoke
def test_shape_and_credentials(client, alice, password, settings):
    settings.TURN_CREDENTIAL_TTL = 600
    relay = Relay.objects.create(
        name="r1",
        region="eu",
        urls=["turn:r1.example:3478?transport=udp", "turns:r1.example:443?transport=tcp"],
        secret="topsecret",
        status=RelayStatus.UP,
        last_rtt_ms=3,
        last_checked_at=timezone.now(),
        audited_at=timezone.now(),
    )
    client.login(username="alice", password=password)
    before = int(time.time())
    body = client.get(URL).json()

    assert set(body) == {
        "iceServers",
        "ttl",
        "expiresAt",
        "refreshAt",
        "relays",
        "status",
        "grant",
    }
    assert body["ttl"] == 600 and body["status"] == "ok"
    assert body["relays"] == [{"id": str(relay.id), "name": "r1", "region": "eu"}]
    (server,) = body["iceServers"]
    assert server["urls"] == relay.urls
    expiry, opaque = server["username"].split(":")
    assert before + 600 <= int(expiry) <= int(time.time()) + 600
    assert "alice" not in server["username"]  # relays log usernames: never a name or email
    # The grant, then the relay's key: the relay's published allocations name both.
    grant_id, relay_key = opaque.split(".")
    assert relay_key == relay.id.hex and grant_id == body["grant"]
    grant = CredentialGrant.objects.get(pk=grant_id)
    assert grant.user == alice and list(grant.relays.all()) == [relay]
    expected = base64.b64encode(
        hmac.new(b"topsecret", server["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert server["credential"] == expected


@pytest.mark.smoke
def test_the_secret_never_appears_in_the_response(client, alice, password):
    Relay.objects.create(
        name="r1",
        urls=["turn:r1.example"],
        secret="do-not-leak-me",
        status=RelayStatus.UP,
        last_checked_at=timezone.now(),
        audited_at=timezone.now(),
    )
    client.login(username="alice", password=password)
    assert b"do-not-leak-me" not in client.get(URL).content


@pytest.mark.smoke
def test_no_healthy_relay_says_so(client, alice, password):
    Relay.objects.create(
        name="down",
        urls=["turn:d.example"],
        secret="s",
        status=RelayStatus.DOWN,
        last_checked_at=timezone.now(),
        audited_at=timezone.now(),
    )
    client.login(username="alice", password=password)
    body = client.get(URL).json()
    assert (
        body["iceServers"] == [] and body["relays"] == [] and body["status"] == "no-healthy-relay"
    )


def _allocates(ice) -> str:
    """ "" when the credentials allocate on every URL of the real relay, else the error."""
    plan = ProbePlan(
        urls=[parse_ice_url(u) for u in ice["urls"]],
        credentials=lambda _exp: (ice["username"], ice["credential"]),
        timeout=3,
        packets=0,
        audit=False,
        check_credentials=False,
    )
    report = asyncio.run(probe_relay(plan))
    return "" if report.ok else report.error or "failed"


def test_issued_credentials_allocate_on_the_real_relay(client, alice, password, registered):
    relay, server = registered("real")
    relay_sweep()
    client.login(username="alice", password=password)
    (ice,) = client.get(URL).json()["iceServers"]
    assert _allocates(ice) == ""


def test_a_refreshed_credential_allocates_and_an_expired_one_is_refused(
    client, alice, password, registered, settings
):
    """The refresh a long call makes (?keep=): same grant, a new expiry, and coturn takes it; a
    credential past its expiry is refused by the same relay."""
    relay, server = registered("real")
    relay_sweep()
    client.login(username="alice", password=password)
    first = client.get(URL).json()
    refreshed = client.get(URL, {"keep": first["grant"]}).json()
    assert refreshed["grant"] == first["grant"]
    (ice,) = refreshed["iceServers"]
    assert _allocates(ice) == ""
    from relays.credentials import turn_rest_pair

    username, credential = turn_rest_pair(
        secret=server.secret, expires_at=int(time.time()) - 60, opaque_id=first["grant"]
    )
    expired = {"urls": ice["urls"], "username": username, "credential": credential}
    assert "401" in _allocates(expired)


def test_schema_documents_the_endpoint(client, alice, password):
    client.login(username="alice", password=password)
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"/api/v1/ice-servers/" in response.content


def six_relays_up() -> None:
    for i in range(6):
        Relay.objects.create(
            name=f"r{i}",
            urls=[f"turn:r{i}.example:3478?transport=udp"],
            secret="s",
            status=RelayStatus.UP,
            last_rtt_ms=i,
            last_checked_at=timezone.now(),
            audited_at=timezone.now(),
        )


def test_issuing_ice_servers_takes_a_fixed_number_of_queries(
    client, alice, password, settings, django_assert_num_queries
):
    """The hot path of every call: the query count doesn't grow with the fleet or the relays handed out."""
    settings.RELAYS_PER_CALLER = 3
    six_relays_up()
    client.login(username="alice", password=password)
    # session, user; the fleet (relays with their load, address ranges: read afresh here, kept
    # by each process for RELAY_SNAPSHOT_SECONDS otherwise), what clients on the caller's network
    # measured; then one statement (a savepoint around it inside the test's own transaction,
    # and its release): the user's unexpired grants (the cap), the grant, its relay links
    with django_assert_num_queries(8):
        body = client.get(URL).json()
    assert len(body["iceServers"]) == 3


@pytest.mark.snapshot
def test_with_the_fleet_snapshot_warm_issuing_takes_one_statement_beyond_authentication(
    client, alice, password, settings, django_assert_num_queries
):
    """benchmarks/assignment.py's goal (at most 3), here as a count: one statement counts the
    user's grants against the cap, adds the grant and its relay links (the fleet and the
    network's measurements come from the snapshot)."""
    settings.RELAY_SNAPSHOT_SECONDS = 60
    six_relays_up()
    client.login(username="alice", password=password)
    client.get(URL)  # builds the snapshot
    # session, user, savepoint, the statement, savepoint release
    with django_assert_num_queries(5):
        body = client.get(URL).json()
    assert len(body["relays"]) == 2
    # A refresh that keeps its relays: the grant's relays, then its new expiry.
    with django_assert_num_queries(4):
        again = client.get(URL, {"keep": body["grant"]}).json()
    assert again["grant"] == body["grant"] and again["relays"] == body["relays"]


@pytest.mark.snapshot
def test_issuing_for_an_integrators_user_takes_as_few_statements(
    client, settings, django_assert_num_queries
):
    """The same goal for the other two ways in: an integrator's server (its key, ?user=) and
    the end user's page (its device token)."""
    from django.contrib.auth import get_user_model

    from integrations.tickets import device_token_for
    from tests.integrations.test_api_keys import bearer, make_key
    from tests.integrations.test_end_users import upsert

    settings.RELAY_SNAPSHOT_SECONDS = 60
    six_relays_up()
    key = make_key("users:write", "ice:issue")
    upsert(client, key, "u-1", "One", expect=201)
    client.get(URL, {"user": "u-1"}, **bearer(key))  # builds the snapshot; the key's last use
    # The key with its integrator (one read: was two), the end user; savepoint, the statement,
    # release.
    with django_assert_num_queries(5):
        assert client.get(URL, {"user": "u-1"}, **bearer(key)).status_code == 200
    token = device_token_for(get_user_model().objects.get(external_id="u-1"))
    headers = {"HTTP_AUTHORIZATION": f"Device {token}"}
    client.get(URL, **headers)  # what clients on this network measured: read once a snapshot
    # The user; savepoint, the statement, release.
    with django_assert_num_queries(4):
        assert client.get(URL, **headers).status_code == 200
