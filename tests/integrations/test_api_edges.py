"""What schemathesis found, as a class: every address under /api/ answers in the API's error
shape, whatever is wrong with it (NUL characters, ids that match no route, a CSRF refusal
outside DRF's views)."""

from __future__ import annotations

import pytest

from tests.integrations.test_api_keys import bearer, make_key

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/ice-servers/?user=%00x",
        "/api/v1/calls/?state=%00",
        "/api/v1/users/u%00/",
        "/api/v1/calls/?%00=1",
    ],
)
def test_nul_characters_are_a_400_not_a_500(client, url):
    key = make_key("users:write", "calls:read", "ice:issue")
    response = client.get(url, **bearer(key))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_nul_outside_the_api_is_a_plain_400(client):
    assert client.get("/accounts/login/?next=%00").status_code == 400


@pytest.mark.parametrize(
    "method,url",
    [
        ("get", "/api/v1/webhooks/-5/"),
        ("delete", "/api/v1/webhooks/not-a-number/"),
        ("post", "/api/v1/no-such-thing/"),
        ("get", "/api/v1/calls/not-a-uuid/"),
        # Line breaks and other controls in a segment (Schemathesis found "%0A" in a relay name).
        ("post", "/api/v1/relays/a%0Ab/drain/"),
        ("get", "/api/v1/relays/%0A/"),
        ("get", "/api/v1/calls/%0D%0A/"),
        ("get", "/api/v1/no-such-thing%0A"),
        ("delete", "/api/v1/webhooks/1%09/"),
    ],
)
def test_unmatched_api_addresses_are_json_404s(client, method, url):
    key = make_key("webhooks", "calls:read")
    response = getattr(client, method)(url, **bearer(key))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_a_csrf_refusal_under_the_api_is_json_and_elsewhere_djangos_page():
    import json

    from django.test import RequestFactory

    from config.api_errors import csrf_failure

    api = csrf_failure(RequestFactory().post("/api/v1/anything/"), reason="CSRF cookie not set.")
    assert api.status_code == 403 and api["Content-Type"] == "application/json"
    assert json.loads(api.content)["error"]["code"] == "forbidden"
    page = csrf_failure(RequestFactory().post("/accounts/login/"), reason="x")
    assert page.status_code == 403 and "text/html" in page["Content-Type"]


@pytest.mark.parametrize(
    "url,body,unknown",
    [
        ("/api/v1/users/", {"externalId": "u-1", "displayname": "typo"}, "displayname"),
        ("/api/v1/calls/", {"participants": ["u-1", "u-2"], "video": True}, "video"),
        ("/api/v1/tickets/", {"user": "u-1", "ttl": 3600}, "ttl"),
        ("/api/v1/webhooks/", {"url": "https://x.example/h", "secret": "mine"}, "secret"),
    ],
)
def test_unknown_fields_are_a_400_naming_them(client, url, body, unknown):
    from django.contrib.auth import get_user_model

    key = make_key("users:write", "calls:write", "webhooks")
    response = client.post(url, body, content_type="application/json", **bearer(key))
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"][unknown] == ["Unknown field."]
    assert not get_user_model().objects.exclude(integrator=None).exists()


def test_unknown_fields_for_signed_in_people_too(client, alice, bob, password):
    client.login(username="alice", password=password)
    response = client.post(
        "/api/v1/calls/", {"callee": "bob", "kindd": "voice"}, content_type="application/json"
    )
    assert response.status_code == 400 and "kindd" in response.json()["error"]["fields"]
