"""An integrator's end users: made, renamed, read and deleted over the API; kept apart from
other integrators and from the site's own people."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from calls.selectors import NotCallable, callee_for
from calls.services import CallError, call_start
from tests.integrations.test_api_keys import bearer, make_key

pytestmark = pytest.mark.django_db
USERS = "/api/v1/users/"


def upsert(client, key, external_id, name="", expect=None):
    response = client.post(
        USERS,
        {"externalId": external_id, "displayName": name},
        content_type="application/json",
        **bearer(key),
    )
    if expect is not None:
        assert response.status_code == expect, response.content
    return response


def test_make_rename_read_and_delete_an_end_user(client, alice):
    from calls.models import ChatMessage
    from relays.models import CredentialGrant

    key = make_key("users:write")
    made = upsert(client, key, "u-42", "Ada", expect=201).json()
    assert made["externalId"] == "u-42" and made["displayName"] == "Ada"
    assert upsert(client, key, "u-42", "Ada L.", expect=200).json()["displayName"] == "Ada L."
    assert client.get(f"{USERS}u-42/", **bearer(key)).json()["displayName"] == "Ada L."
    user = get_user_model().objects.get(external_id="u-42")
    assert not user.has_usable_password() and user.integrator.slug == "acme"

    other = get_user_model().objects.create(username="acme~u-43", integrator=user.integrator)
    call = call_start(caller=user, callee=other)
    ChatMessage.objects.create(call=call, user=user, text="my secret")
    CredentialGrant.objects.create(user=user, expires_at=call.created_at)
    assert client.delete(f"{USERS}u-42/", **bearer(key)).status_code == 204
    user.refresh_from_db()
    assert (user.display_name, user.external_id, user.is_active) == ("Deleted user", None, False)
    assert "u-42" not in user.username
    assert not ChatMessage.objects.filter(user=user).exists()
    assert not CredentialGrant.objects.filter(user=user).exists()
    assert call.participants.count() == 2  # the other side's history stays
    assert client.get(f"{USERS}u-42/", **bearer(key)).status_code == 404
    # The same id can be made again: a new person, not the deleted one.
    assert upsert(client, key, "u-42", "Someone", expect=201).json()["displayName"] == "Someone"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"externalId": "", "displayName": "x"},
        {"externalId": "has space", "displayName": "x"},
        {"externalId": "a/b", "displayName": "x"},
        {"externalId": "x" * 81, "displayName": "x"},
        {"externalId": 42, "displayName": "x"},
        {"externalId": "ok", "displayName": "x" * 81},
    ],
)
def test_bad_end_users_are_refused_with_the_field_named(client, body):
    key = make_key("users:write")
    response = client.post(USERS, body, content_type="application/json", **bearer(key))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["fields"]) & {"externalId", "displayName"}
    assert not get_user_model().objects.exclude(integrator=None).exists()


def test_integrators_see_only_their_own_users(client):
    acme = make_key("users:write", integrator="acme")
    globex = make_key("users:write", integrator="globex", name="g")
    upsert(client, acme, "same-id", "Acme's", expect=201)
    upsert(client, globex, "same-id", "Globex's", expect=201)  # a different person
    assert client.get(f"{USERS}same-id/", **bearer(acme)).json()["displayName"] == "Acme's"
    assert client.get(f"{USERS}same-id/", **bearer(globex)).json()["displayName"] == "Globex's"
    assert client.delete(f"{USERS}same-id/", **bearer(globex)).status_code == 204
    assert client.get(f"{USERS}same-id/", **bearer(acme)).status_code == 200


def test_user_endpoints_need_the_scope_and_a_key(client, alice, password):
    reader = make_key("calls:read")
    assert upsert(client, reader, "u-1").status_code == 403
    assert client.get(f"{USERS}u-1/", **bearer(reader)).status_code == 403
    assert client.post(USERS, {}, content_type="application/json").status_code == 401
    client.login(username="alice", password=password)
    response = client.get(f"{USERS}u-1/")
    assert response.status_code == 403
    assert not get_user_model().objects.exclude(integrator=None).exists()


def test_end_users_and_the_sites_people_cannot_reach_each_other(client, alice):
    key = make_key("users:write")
    upsert(client, key, "u-1", "One", expect=201)
    upsert(client, key, "u-2", "Two", expect=201)
    other = make_key("users:write", integrator="globex", name="g")
    upsert(client, other, "u-9", "Nine", expect=201)
    User = get_user_model()
    one, two, nine = (User.objects.get(display_name=n) for n in ("One", "Two", "Nine"))
    # By name, as the web form and the socket's invite look people up: "no one called …".
    for caller, name in [(alice, one.username), (one, "alice"), (one, nine.username)]:
        with pytest.raises(NotCallable, match="no one called"):
            callee_for(caller=caller, username=name)
    assert callee_for(caller=one, username=two.username) == two
    # And directly, as a service would be asked.
    for caller, callee in [(alice, one), (one, alice), (one, nine)]:
        with pytest.raises(CallError, match="can't take calls"):
            call_start(caller=caller, callee=callee)
    assert call_start(caller=one, callee=two).state == "ringing"


@pytest.mark.parametrize(
    "url,body,field",
    [
        ("/api/v1/calls/", {"callee": 42}, "callee"),
        ("/api/v1/calls/", {"callee": ["bob"]}, "callee"),
        ("/api/v1/relays/failures/", {"relayUrl": True, "problem": "ice"}, "relayUrl"),
        ("/api/v1/relays/gather/", {"gathered": [{"relayUrl": 7, "ms": 1}]}, "gathered"),
    ],
)
def test_wrong_types_are_a_400_naming_the_field_not_coerced(
    client, alice, bob, password, url, body, field
):
    client.login(username="alice", password=password)
    response = client.post(url, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_ice_servers_for_an_end_user_by_key_and_by_device_token(client, settings):
    from integrations.tickets import device_token_for
    from relays.models import CredentialGrant
    from tests.conftest import up_relay

    up_relay("eu-1", region="eu")
    key = make_key("users:write", "ice:issue")
    upsert(client, key, "u-1", "One", expect=201)
    user = get_user_model().objects.get(external_id="u-1")
    ice = client.get("/api/v1/ice-servers/", {"user": "u-1", "region": "eu"}, **bearer(key))
    assert ice.status_code == 200 and ice.json()["relays"][0]["name"] == "eu-1"
    assert CredentialGrant.objects.get().user == user
    assert client.get("/api/v1/ice-servers/", **bearer(key)).status_code == 404  # no ?user=
    assert client.get("/api/v1/ice-servers/", {"user": "ghost"}, **bearer(key)).status_code == 404
    no_scope = make_key("users:write", name="no-ice")
    assert (
        client.get("/api/v1/ice-servers/", {"user": "u-1"}, **bearer(no_scope)).status_code == 403
    )
    # The end user's own page: its device token, no cookie, no CSRF.
    token = device_token_for(user)
    mine = client.get("/api/v1/ice-servers/", HTTP_AUTHORIZATION=f"Device {token}")
    assert mine.status_code == 200 and mine.json()["relays"][0]["name"] == "eu-1"
    report = client.post(
        "/api/v1/relays/gather/",
        {"gathered": [{"relayUrl": mine.json()["iceServers"][0]["urls"][0], "ms": 9}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Device {token}",
    )
    assert report.status_code == 202 and report.json() == {"taken": 1}
    for bad in (token[:-3] + "xyz", "garbage"):
        refused = client.get("/api/v1/ice-servers/", HTTP_AUTHORIZATION=f"Device {bad}")
        assert refused.status_code == 401
    # Deleted: its token stops working.
    client.delete("/api/v1/users/u-1/", **bearer(key))
    gone = client.get("/api/v1/ice-servers/", HTTP_AUTHORIZATION=f"Device {token}")
    assert gone.status_code == 401
