"""Relays in admin: staff only, status badges, and a secret that is never shown back."""

import pytest
from django.utils import timezone

from relays.models import Relay, RelayStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model, password):
    return django_user_model.objects.create_superuser("root", password=password)


@pytest.fixture
def relay():
    return Relay.objects.create(
        name="fra-1",
        region="eu",
        urls=["turn:fra1.example:3478?transport=udp"],
        secret="s3cr3t-value",
        status=RelayStatus.UP,
        last_rtt_ms=1.25,
        last_checked_at=timezone.now(),
    )


@pytest.mark.smoke
def test_non_staff_users_cannot_reach_admin(client, alice, password, relay):
    client.login(username="alice", password=password)
    response = client.get("/admin/relays/relay/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_list_shows_status_rtt_and_never_the_secret(client, staff, password, relay):
    client.login(username="root", password=password)
    html = client.get("/admin/relays/relay/").content.decode()
    assert "fra-1" in html and "relay-badge" in html and ">up<" in html and "1.25 ms" in html
    assert "s3cr3t-value" not in html


def test_change_page_does_not_render_the_secret(client, staff, password, relay):
    client.login(username="root", password=password)
    html = client.get(f"/admin/relays/relay/{relay.pk}/change/").content.decode()
    assert "s3cr3t-value" not in html
    assert 'type="password"' in html


def test_saving_with_a_blank_secret_keeps_the_old_one(client, staff, password, relay):
    client.login(username="root", password=password)
    data = {
        "name": "fra-1",
        "region": "eu-central",
        "urls": '["turn:fra1.example:3478?transport=udp"]',
        "realm": "",
        "enabled": "on",
        "secret": "",
    }
    response = client.post(f"/admin/relays/relay/{relay.pk}/change/", data)
    assert response.status_code == 302
    relay.refresh_from_db()
    assert relay.secret == "s3cr3t-value" and relay.region == "eu-central"


def test_a_new_relay_needs_a_secret_and_valid_urls(client, staff, password):
    client.login(username="root", password=password)
    response = client.post(
        "/admin/relays/relay/add/", {"name": "x", "urls": '["http://nope"]', "secret": ""}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "needs its shared secret" in html and "is not an ICE URL" in html
    assert not Relay.objects.exists()


def test_stale_relays_show_as_stale(client, staff, password, relay, settings):
    Relay.objects.filter(pk=relay.pk).update(
        last_checked_at=timezone.now() - timezone.timedelta(hours=1)
    )
    client.login(username="root", password=password)
    assert ">stale<" in client.get("/admin/relays/relay/").content.decode()


def test_probe_now_action_probes_for_real(client, staff, password, coturn):
    server = coturn(allow_loopback_peers=False)
    relay = Relay.objects.create(name="live", urls=server.urls, secret=server.secret)
    client.login(username="root", password=password)
    response = client.post(
        "/admin/relays/relay/",
        {"action": "probe_now", "_selected_action": [str(relay.pk)]},
        follow=True,
    )
    assert "Relay live: up" in response.content.decode()
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UP
