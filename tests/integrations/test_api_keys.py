"""Integrators' API keys: Bearer authentication, scopes, revocation, expiry, last use, per-key
throttling, the manage.py command and admin; keys are never stored or shown but once."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIRequestFactory

from integrations.auth import IntegratorPrincipal, KeyScopes
from integrations.models import Integrator, IntegratorKey

pytestmark = pytest.mark.django_db
WHOAMI = "/api/v1/whoami/"


def make_key(*scopes: str, integrator: str = "acme", name: str = "server") -> str:
    out = StringIO()
    args = ["create", name, "--integrator", integrator]
    for scope in scopes:
        args += ["--scope", scope]
    call_command("apikeys", *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.mark.smoke
def test_a_key_made_on_the_command_line_authenticates_with_its_scopes(client):
    key = make_key("calls:read", "ice:issue")
    assert Integrator.objects.get(slug="acme")
    response = client.get(WHOAMI, **bearer(key))
    assert response.status_code == 200
    assert response.json() == {
        "kind": "key",
        "integrator": "acme",
        "key": key.split(".")[0],
        "scopes": ["calls:read", "ice:issue"],
    }
    stored = IntegratorKey.objects.get()
    assert key not in (stored.id, stored.hashed_key) and key.split(".")[1] not in stored.id
    assert stored.last_used_at is not None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer a b",
        "Bearer not-a-key",
        "Bearer abcdefgh.0123456789abcdef0123456789abcdef",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_no_key_or_a_bad_one_is_a_401_that_says_how_to_authenticate(client, header):
    make_key("calls:read")
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get(WHOAMI, **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="traverse"'
    assert response.json()["error"]["code"] == "unauthenticated"


def test_the_right_prefix_with_the_wrong_secret_is_refused(client):
    key = make_key("calls:read")
    prefix = key.split(".")[0]
    assert client.get(WHOAMI, **bearer(prefix + ".x" * 16)).status_code == 401


def test_a_revoked_or_expired_key_stops_working_and_revoking_orphans_nothing(client):
    old = make_key("calls:read", name="old")
    new = make_key("calls:read", name="new")
    call_command("apikeys", "revoke", "old", stdout=StringIO())
    assert client.get(WHOAMI, **bearer(old)).status_code == 401
    assert client.get(WHOAMI, **bearer(new)).status_code == 200  # same integrator, still there
    IntegratorKey.objects.filter(name="new").update(
        expiry_date=timezone.now() - timedelta(seconds=1)
    )
    expired = client.get(WHOAMI, **bearer(new))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    assert Integrator.objects.count() == 1


def test_the_command_refuses_unknown_scopes_and_ambiguous_revokes():
    with pytest.raises(CommandError, match="Unknown scope"):
        make_key("calls:delete-everything")
    assert not IntegratorKey.objects.exists()
    make_key("calls:read", integrator="a", name="same")
    make_key("calls:read", integrator="b", name="same")
    with pytest.raises(CommandError, match="--integrator"):
        call_command("apikeys", "revoke", "same", stdout=StringIO())
    call_command("apikeys", "revoke", "same", "--integrator", "b", stdout=StringIO())
    assert list(IntegratorKey.objects.filter(revoked=True).values_list("integrator__slug")) == [
        ("b",)
    ]
    with pytest.raises(CommandError, match="no usable key"):
        call_command("apikeys", "revoke", "nobody", stdout=StringIO())


def test_endpoints_for_people_refuse_keys_and_change_nothing(client):
    from relays.models import CredentialGrant

    key = make_key("calls:read", "calls:write", "ice:issue", "users:write")
    for method, url in [
        ("post", "/api/v1/relays/failures/"),
        ("get", "/api/v1/relays/explain/"),
    ]:
        response = getattr(client, method)(url, **bearer(key))
        assert response.status_code == 403, (url, response.content)
        assert response.json()["error"]["code"] == "forbidden"
    assert not CredentialGrant.objects.exists()


def test_a_key_without_the_views_scope_is_a_403_with_the_scope_named():
    key = make_key("calls:read")
    principal = IntegratorPrincipal(IntegratorKey.objects.get())

    class View:
        key_scopes = {"GET": "calls:read", "POST": "calls:write"}

    factory = APIRequestFactory()
    permission = KeyScopes()
    get, post = factory.get("/x"), factory.post("/x")
    get.user = post.user = principal
    assert permission.has_permission(get, View())
    assert not permission.has_permission(post, View())
    assert "calls:write" in permission.message
    assert key  # made


def test_signed_in_people_are_unaffected(client, alice, password):
    client.login(username="alice", password=password)
    response = client.get(WHOAMI)
    assert response.status_code == 200 and response.json()["kind"] == "user"
    assert response.json()["user"]["username"] == "alice"


def test_session_posts_still_need_csrf(alice, password):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.login(username="alice", password=password)
    response = strict.post("/api/v1/calls/", {"callee": "bob"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["error"]["message"]


@pytest.mark.ratelimit
def test_each_key_has_its_own_rate(client, settings):
    settings.API_KEY_RATE = "3/m"
    one, two = make_key("calls:read", name="one"), make_key("calls:read", name="two")
    codes = [client.get(WHOAMI, **bearer(one)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get(WHOAMI, **bearer(one))
    assert int(limited["Retry-After"]) >= 1 and limited.json()["error"]["code"] == "rate_limited"
    assert client.get(WHOAMI, **bearer(two)).status_code == 200


def test_keys_appear_in_no_log_and_in_admin_only_once(client, django_user_model, password, caplog):
    caplog.set_level(logging.DEBUG)
    key = make_key("calls:read")
    client.get(WHOAMI, **bearer(key))
    client.get(WHOAMI, **bearer(key + "x"))
    assert key not in caplog.text and key.split(".")[1] not in caplog.text
    django_user_model.objects.create_superuser("root", password=password)
    client.login(username="root", password=password)
    integrator = Integrator.objects.get()
    created = client.post(
        "/admin/integrations/integratorkey/add/",
        {"integrator": integrator.pk, "name": "from-admin", "scopes": ["webhooks"]},
        follow=True,
    )
    assert created.status_code == 200
    shown = [str(m) for m in created.context["messages"]]
    (message,) = [m for m in shown if "The API key for from-admin is" in m]
    secret = message.split("is: ")[1].split(". ")[0]
    assert client.get(WHOAMI, **bearer(secret)).json()["scopes"] == ["webhooks"]
    for page in (
        "/admin/integrations/integratorkey/",
        f"/admin/integrations/integrator/{integrator.pk}/change/",
        f"/admin/integrations/integratorkey/{IntegratorKey.objects.get(name='from-admin').pk}/change/",
    ):
        html = client.get(page).content.decode()
        assert secret not in html and secret.split(".")[1] not in html
