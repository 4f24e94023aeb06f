"""Every integrator endpoint × every kind of caller: the owning integrator, another integrator,
a signed-in person, a key without the scope, a revoked key, no credentials. Each gets the
status the table says, and nothing of the owner's (ids, names, URLs) ever shows to the others."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from tests.integrations.test_api_keys import bearer, make_key
from tests.integrations.test_schema import SCOPES

pytestmark = pytest.mark.django_db

ALL = ("users:write", "calls:read", "calls:write", "ice:issue", "webhooks")
SECRET_NAME = "Ada-the-owners-user"
HOOK_URL = "https://hooks.owner.example/secret-path"


@pytest.fixture
def world(client, alice, bob, password):
    from tests.conftest import up_relay

    up_relay("matrix-relay")
    owner = make_key(*ALL, integrator="owner", name="owner")
    for ext, name in (("u-1", SECRET_NAME), ("u-2", "Bea")):
        client.post(
            "/api/v1/users/",
            {"externalId": ext, "displayName": name},
            content_type="application/json",
            **bearer(owner),
        )
    call = client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(owner),
    ).json()
    hook = client.post(
        "/api/v1/webhooks/", {"url": HOOK_URL}, content_type="application/json", **bearer(owner)
    ).json()
    other = make_key(*ALL, integrator="other", name="other")
    client.post(
        "/api/v1/users/",
        {"externalId": "u-1", "displayName": "Other's"},
        content_type="application/json",
        **bearer(other),
    )
    revoked = make_key(*ALL, integrator="owner", name="revoked")
    call_command("apikeys", "revoke", "revoked", stdout=StringIO())
    return {
        "owner": owner,
        "other": other,
        "revoked": revoked,
        "call": call["id"],
        "hook": hook["id"],
        "password": password,
    }


def request(world, who: str, method: str, path: str, scope: str | None):
    client = Client()
    headers = {}
    if who in ("owner", "other", "revoked"):
        headers = bearer(world[who])
    elif who == "unscoped":
        others = [s for s in ALL if s != scope] or ["calls:read"]
        headers = bearer(make_key(*others, integrator="owner", name=f"unscoped-{len(others)}"))
    elif who == "person":
        client.login(username="alice", password=world["password"])
    url = path.format(call_id=world["call"], external_id="u-1", webhook_id=world["hook"])
    body = None
    if (path, method) == ("/api/v1/calls/", "post"):
        body = {"callee": "bob"} if who == "person" else {"participants": ["u-1", "u-2"]}
    elif path == "/api/v1/users/":
        body = {"externalId": "u-9", "displayName": "New"}
    elif path == "/api/v1/tickets/":
        body = {"user": "u-1", "call": world["call"]}
    elif path == "/api/v1/webhooks/" and method == "post":
        body = {"url": "https://hooks.example.com/new"}
    elif method == "patch":
        body = {"description": "changed"}
    kwargs = {"content_type": "application/json"} if body is not None else {}
    response = (
        getattr(client, method)(
            url, json.dumps(body) if body is not None else None, **kwargs, **headers
        )
        if body is not None
        else getattr(client, method)(url, **headers)
    )
    return response


# What each caller gets. Owner: success. Other integrator: not found for the owner's things,
# its own (empty or separate) view of collections. Person: keys-only endpoints refuse (403),
# calls they aren't in are not found. Unscoped key: 403. Revoked and none: 401.
def expected(who: str, method: str, path: str, scope: str | None) -> set[int]:
    if who in ("revoked", "none"):
        return {401}
    if who == "unscoped":
        return {403}
    owned = "{" in path or path == "/api/v1/tickets/"
    if who == "owner":
        return {200, 201, 204}
    if who == "other":
        if path in ("/api/v1/ice-servers/", "/api/v1/users/{external_id}/"):
            return {200, 204}  # its own u-1: the same externalId, another person
        if (path, method) == ("/api/v1/calls/", "post"):
            return {400}  # "you have no user 'u-2'": the owner's u-2 is out of its reach
        return {404} if owned else {200, 201}
    # a signed-in person
    if path.startswith(("/api/v1/users", "/api/v1/tickets", "/api/v1/webhooks")):
        return {403}
    if path == "/api/v1/ice-servers/":
        return {200}  # their own credentials
    return {404} if owned else {200, 201}


# Relays belong to the platform, not to an integrator: tests/integrations/test_relays_api.py
# covers who may manage them.
KEY_PATHS = sorted(
    (p, m, s) for (p, m), s in SCOPES.items() if s not in (None, "*", "relays:admin")
)


@pytest.mark.parametrize("path,method,scope", KEY_PATHS)
@pytest.mark.parametrize("who", ["owner", "other", "person", "unscoped", "revoked", "none"])
def test_authorization_matrix(world, who, path, method, scope):
    if path == "/api/v1/ice-servers/":
        path = "/api/v1/ice-servers/?user=u-1" if who != "person" else path
    response = request(world, who, method, path, scope)
    assert response.status_code in expected(who, method, path.split("?")[0], scope), (
        who,
        method,
        path,
        response.status_code,
        response.content[:300],
    )
    if who != "owner":
        text = response.content.decode()
        for secret in (SECRET_NAME, HOOK_URL, world["owner"]):
            assert secret not in text, (who, method, path)
        if "{" not in path:  # a collection: none of the owner's call
            assert world["call"] not in text or who == "person", (who, path)
    if response.status_code in (401, 403):
        assert response.json()["error"]["code"] in ("unauthenticated", "forbidden")
