"""/api/v1/calls/: integrators start and read calls; other people's calls are not found."""

import pytest

from calls.models import Call
from calls.services import call_start

pytestmark = pytest.mark.django_db


@pytest.mark.smoke
def test_start_list_and_read(client, alice, bob, password):
    client.login(username="alice", password=password)
    response = client.post("/api/v1/calls/", {"callee": "bob"}, content_type="application/json")
    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "ringing" and [p["username"] for p in body["participants"]] == [
        "alice",
        "bob",
    ]
    listed = client.get("/api/v1/calls/").json()
    assert [c["id"] for c in listed["results"]] == [body["id"]] and listed["next"] is None
    assert client.get(f"/api/v1/calls/{body['id']}/").json()["id"] == body["id"]


def test_outsiders_get_404_and_anonymous_get_a_json_error(client, alice, bob, charlie, password):
    call = call_start(caller=alice, callee=bob)
    assert client.get(f"/api/v1/calls/{call.id}/").status_code in (401, 403)
    client.login(username="charlie", password=password)
    response = client.get(f"/api/v1/calls/{call.id}/")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "No such call."}}
    assert client.get("/api/v1/calls/").json()["results"] == []


def test_bad_requests_are_explained(client, alice, password):
    client.login(username="alice", password=password)
    for payload, field in (
        ({"callee": "ghost"}, "callee"),
        ({"callee": "alice"}, "callee"),
        ({}, "callee"),
    ):
        response = client.post("/api/v1/calls/", payload, content_type="application/json")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid" and error["fields"][field], error
    response = client.post("/api/v1/calls/", "{nope", content_type="application/json")
    assert response.status_code == 400
    assert (
        response.json()["error"]["code"] == "bad_json"
        and "JSON" in (response.json()["error"]["message"])
    )
    assert not Call.objects.exists()
