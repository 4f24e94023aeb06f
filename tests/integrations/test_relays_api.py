"""Relays over the API (scope relays:admin, or staff signed in): register, list, read, change,
probe for real, drain, remove; the secret is write-only everywhere."""

from __future__ import annotations

import logging

import pytest

from relays.models import Relay
from tests.integrations.test_api_keys import bearer, make_key

pytestmark = pytest.mark.django_db
SECRET = "a-relay-secret-of-some-length"


def test_register_read_change_probe_drain_and_remove(client, coturn, caplog):
    caplog.set_level(logging.DEBUG)
    key = make_key("relays:admin")
    server = coturn(allow_loopback_peers=False)
    made = client.post(
        "/api/v1/relays/",
        {
            "name": "api-relay",
            "urls": server.urls,
            "secret": server.secret,
            "region": "eu",
            "allow_private": True,
            "private_reason": "a test rig on loopback",
        },
        content_type="application/json",
        **bearer(key),
    )
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["name"] == "api-relay" and "secret" not in body and "private_reason" not in body
    assert body["health"]["status"] == "unknown"
    probed = client.post("/api/v1/relays/api-relay/probe/", **bearer(key)).json()
    assert probed["health"]["transports"] == {"stun": "up", "udp": "up", "tcp": "up"}
    changed = client.patch(
        "/api/v1/relays/api-relay/",
        {"region": "us", "capacity": 50},
        content_type="application/json",
        **bearer(key),
    ).json()
    assert (changed["region"], changed["capacity"]) == ("us", 50)
    assert Relay.objects.get(name="api-relay").secret == server.secret  # kept
    drained = client.post("/api/v1/relays/api-relay/drain/", **bearer(key)).json()
    assert drained["draining"] is True
    listed = client.get("/api/v1/relays/", **bearer(key)).json()
    assert [r["name"] for r in listed] == ["api-relay"]
    for response in (made, client.get("/api/v1/relays/api-relay/", **bearer(key))):
        assert server.secret not in response.content.decode()
    assert server.secret not in caplog.text
    assert client.delete("/api/v1/relays/api-relay/", **bearer(key)).status_code == 204
    assert not Relay.objects.exists()
    assert client.get("/api/v1/relays/api-relay/", **bearer(key)).status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "r", "urls": ["turn:203.0.113.9:3478"], "secret": "short"}, "secret"),
        ({"name": "r", "urls": ["http://x"], "secret": SECRET}, "urls"),
        ({"name": "r", "urls": ["turn:127.0.0.1:3478"], "secret": SECRET}, "urls"),
        ({"name": "bad name!", "urls": ["turn:203.0.113.9:3478"], "secret": SECRET}, "name"),
        ({"urls": ["turn:203.0.113.9:3478"], "secret": SECRET}, "name"),
        # The API's own routes: /api/v1/relays/explain/ would never reach a relay so named.
        ({"name": "explain", "urls": ["turn:203.0.113.9:3478"], "secret": SECRET}, "name"),
        ({"name": "Gather", "urls": ["turn:203.0.113.9:3478"], "secret": SECRET}, "name"),
    ],
)
def test_bad_relays_are_refused_naming_the_field(client, body, field):
    key = make_key("relays:admin")
    response = client.post("/api/v1/relays/", body, content_type="application/json", **bearer(key))
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not Relay.objects.exists()


def test_who_may_manage_relays(client, django_user_model, alice, password):
    from tests.conftest import up_relay

    up_relay("r1")
    assert client.get("/api/v1/relays/").status_code == 401
    assert client.get("/api/v1/relays/", **bearer(make_key("calls:read"))).status_code == 403
    client.login(username="alice", password=password)
    assert client.get("/api/v1/relays/").status_code == 403
    assert client.post("/api/v1/relays/r1/drain/").status_code == 403
    client.logout()
    django_user_model.objects.create_superuser("ops", password=password)
    client.login(username="ops", password=password)
    listed = client.get("/api/v1/relays/")
    assert listed.status_code == 200 and "s" * 16 not in listed.content.decode()
