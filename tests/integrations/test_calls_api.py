"""Calls over the API for integrators: start between your users, list (filters, cursor pages,
ordering, updated_since), read, and end; other integrators' and the site's calls are not found."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from calls.models import Call
from calls.services import call_start
from tests.integrations.test_api_keys import bearer, make_key

pytestmark = pytest.mark.django_db
CALLS = "/api/v1/calls/"


def users(client, key, *ids):
    for ext in ids:
        client.post(
            "/api/v1/users/",
            {"externalId": ext, "displayName": ext.upper()},
            content_type="application/json",
            **bearer(key),
        )


def start(client, key, a, b, expect=201):
    response = client.post(
        CALLS, {"participants": [a, b]}, content_type="application/json", **bearer(key)
    )
    assert response.status_code == expect, response.content
    return response.json()


@pytest.fixture
def acme(client):
    key = make_key("users:write", "calls:read", "calls:write")
    users(client, key, "u-1", "u-2", "u-3")
    return key


def test_start_read_and_end_a_call_between_your_users(client, acme):
    call = start(client, acme, "u-1", "u-2")
    assert call["state"] == "ringing"
    assert [(p["externalId"], p["role"]) for p in call["participants"]] == [
        ("u-1", "caller"),
        ("u-2", "callee"),
    ]
    read = client.get(f"{CALLS}{call['id']}/", **bearer(acme)).json()
    assert read["id"] == call["id"] and read["updated_at"]
    ended = client.post(f"{CALLS}{call['id']}/end/", **bearer(acme))
    assert ended.status_code == 200
    assert (ended.json()["state"], ended.json()["end_reason"]) == ("ended", "cancelled")
    again = client.post(f"{CALLS}{call['id']}/end/", **bearer(acme))  # changes nothing
    assert again.status_code == 200 and again.json()["end_reason"] == "cancelled"


@pytest.mark.parametrize(
    "participants,message",
    [
        (["u-1", "u-1"], "Two different users"),
        (["u-1", "ghost"], "no user 'ghost'"),
        (["u-1"], None),
        (["u-1", "u-2", "u-3"], None),
        (["u-1", 2], None),
        ("u-1,u-2", None),
    ],
)
def test_bad_starts_name_the_field(client, acme, participants, message):
    response = client.post(
        CALLS, {"participants": participants}, content_type="application/json", **bearer(acme)
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "participants" in fields
    if message:
        assert message in " ".join(fields["participants"])
    assert not Call.objects.exists()


def test_other_integrators_and_the_sites_calls_are_not_found(client, acme, alice, bob):
    ours = start(client, acme, "u-1", "u-2")
    globex = make_key("users:write", "calls:read", "calls:write", integrator="globex", name="g")
    users(client, globex, "u-1", "u-2")  # the same externalIds, other people
    start(client, globex, "u-1", "u-2")
    site = call_start(caller=alice, callee=bob)
    listed = client.get(CALLS, **bearer(acme)).json()["results"]
    assert [c["id"] for c in listed] == [ours["id"]]
    for call_id in (str(site.id), client.get(CALLS, **bearer(globex)).json()["results"][0]["id"]):
        assert client.get(f"{CALLS}{call_id}/", **bearer(acme)).status_code == 404
        assert client.post(f"{CALLS}{call_id}/end/", **bearer(acme)).status_code == 404
    assert Call.objects.get(pk=site.id).state == "ringing"
    # Acme's users can't be put in a call with globex's, whatever ids are sent.
    assert start(client, acme, "u-1", "u-3")["state"] == "ringing"


def test_scopes_decide(client, acme):
    call = start(client, acme, "u-1", "u-2")
    reader = make_key("calls:read", name="reader")
    writer = make_key("calls:write", name="writer")
    assert client.get(CALLS, **bearer(reader)).status_code == 200
    assert client.get(CALLS, **bearer(writer)).status_code == 403
    assert client.post(f"{CALLS}{call['id']}/end/", **bearer(reader)).status_code == 403
    assert client.post(f"{CALLS}{call['id']}/end/", **bearer(writer)).status_code == 200


def test_list_filters_pages_and_orders(client, acme):
    made = []
    for _ in range(5):
        made.append(start(client, acme, "u-1", "u-2")["id"])
        client.post(f"{CALLS}{made[-1]}/end/", **bearer(acme))
    live = start(client, acme, "u-2", "u-3")["id"]
    seen, url = [], f"{CALLS}?limit=2"
    while url:
        page = client.get(url, **bearer(acme)).json()
        assert len(page["results"]) <= 2
        seen += [c["id"] for c in page["results"]]
        url = page["next"]
    assert seen == [live, *reversed(made)]  # newest first, each once
    oldest = client.get(f"{CALLS}?ordering=created_at&limit=1", **bearer(acme)).json()
    assert oldest["results"][0]["id"] == made[0]
    ringing = client.get(f"{CALLS}?state=ringing", **bearer(acme)).json()["results"]
    assert [c["id"] for c in ringing] == [live]
    with_u3 = client.get(f"{CALLS}?user=u-3", **bearer(acme)).json()["results"]
    assert [c["id"] for c in with_u3] == [live]
    # Pollers: what changed since a moment ago.
    mark = timezone.now()
    time.sleep(0.01)
    client.post(f"{CALLS}{live}/end/", **bearer(acme))
    since = mark.isoformat().replace("+00:00", "Z")
    changed = client.get(CALLS, {"updated_since": since}, **bearer(acme)).json()["results"]
    assert [c["id"] for c in changed] == [live]
    for bad, field in [
        ({"state": "exploded"}, "state"),
        ({"ordering": "username"}, "ordering"),
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"updated_since": "2026-01-01T00:00:00"}, "updated_since"),  # no offset
    ]:
        response = client.get(CALLS, bad, **bearer(acme))
        assert response.status_code == 400 and field in response.json()["error"]["fields"]


def test_signed_in_people_end_their_own_calls_only(client, alice, bob, charlie, password):
    call = call_start(caller=alice, callee=bob)
    client.login(username="charlie", password=password)
    assert client.post(f"{CALLS}{call.id}/end/").status_code == 404
    client.logout()
    client.login(username="bob", password=password)
    ended = client.post(f"{CALLS}{call.id}/end/").json()
    assert (ended["state"], ended["end_reason"]) == ("ended", "declined")  # bob was called
