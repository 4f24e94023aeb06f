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
        secret="s3cr3t-value-long-enough",
        status=RelayStatus.UP,
        last_rtt_ms=1.25,
        last_checked_at=timezone.now(),
        audited_at=timezone.now(),
    )


@pytest.mark.smoke
def test_non_staff_users_cannot_reach_admin(client, alice, password, relay):
    client.login(username="alice", password=password)
    response = client.get("/admin/relays/relay/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_list_shows_status_rtt_and_never_the_secret(client, staff, password, relay):
    client.login(username="root", password=password)
    html = client.get("/admin/relays/relay/").content.decode()
    assert "fra-1" in html and "relay-badge-up" in html and "1.25 ms" in html
    assert "s3cr3t-value-long-enough" not in html


def test_change_page_does_not_render_the_secret(client, staff, password, relay):
    client.login(username="root", password=password)
    html = client.get(f"/admin/relays/relay/{relay.pk}/change/").content.decode()
    assert "s3cr3t-value-long-enough" not in html
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
        "allow_private": "on",
        "private_reason": "example names do not resolve in tests",
    }
    response = client.post(f"/admin/relays/relay/{relay.pk}/change/", data)
    assert response.status_code == 302
    relay.refresh_from_db()
    assert relay.secret == "s3cr3t-value-long-enough" and relay.region == "eu-central"


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
    assert "relay-badge-stale" in client.get("/admin/relays/relay/").content.decode()


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


def _act(client, action, relay):
    return client.post(
        "/admin/relays/relay/", {"action": action, "_selected_action": [str(relay.pk)]}, follow=True
    )


def test_drain_disable_enable_are_recorded_with_who_and_when(client, staff, password, relay, alice):
    from relays.models import RelayEvent
    from relays.selectors import select_relays_for

    client.login(username="root", password=password)
    assert [r.name for r in select_relays_for(user=alice)] == ["fra-1"]

    _act(client, "drain", relay)
    relay.refresh_from_db()
    assert relay.draining and relay.enabled and select_relays_for(user=alice) == []
    _act(client, "disable", relay)
    relay.refresh_from_db()
    assert not relay.enabled
    _act(client, "enable", relay)
    relay.refresh_from_db()
    assert relay.enabled and not relay.draining and relay.status == "unknown"  # probed afresh

    events = list(RelayEvent.objects.filter(relay=relay).order_by("at", "id"))
    assert [e.kind for e in events] == ["drained", "disabled", "enabled"]
    assert all(e.actor == staff and e.at is not None for e in events)
    html = client.get(f"/admin/relays/relay/{relay.pk}/change/").content.decode()
    assert "drained" in html and "by root" in html


def test_next_secret_is_write_only_and_staging_it_is_recorded(client, staff, password, relay):
    client.login(username="root", password=password)
    data = {
        "name": "fra-1",
        "region": "eu",
        "urls": '["turn:fra1.example:3478?transport=udp"]',
        "realm": "",
        "enabled": "on",
        "secret": "",
        "next_secret": "the-next-one-of-16+",
        "allow_private": "on",
        "private_reason": "example names do not resolve in tests",
    }
    assert client.post(f"/admin/relays/relay/{relay.pk}/change/", data).status_code == 302
    relay.refresh_from_db()
    assert relay.next_secret == "the-next-one-of-16+"
    assert relay.secret == "s3cr3t-value-long-enough"
    html = client.get(f"/admin/relays/relay/{relay.pk}/change/").content.decode()
    assert "the-next-one-of-16+" not in html and "a next secret is staged" in html
    assert relay.events.filter(kind="secret-staged", actor=staff).exists()


def test_fleet_overview_and_chart(client, staff, password, registered, coturn):
    good, _ = registered("good")
    leaky_server = coturn(allow_loopback_peers=True)
    from relays.services import relay_create, relay_sweep

    relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="leaky",
        urls=leaky_server.urls,
        secret=leaky_server.secret,
    )
    relay_sweep()
    relay_sweep(force=True)
    client.login(username="root", password=password)
    html = client.get("/admin/relays/relay/fleet/").content.decode()
    assert 'data-relay="good"' in html and 'data-relay="leaky"' in html
    assert "relay-badge-unsafe" in html and "accepts private peers: 127.0.0.1" in html
    assert "<svg" in html and "polyline" in html
    change = client.get(f"/admin/relays/relay/{good.pk}/change/").content.decode()
    assert 'class="relay-chart"' in change and "refuses every private peer" in change
    assert "Fleet overview" in client.get("/admin/relays/relay/").content.decode()


def test_fleet_overview_is_for_staff_only(client, alice, password):
    client.login(username="alice", password=password)
    response = client.get("/admin/relays/relay/fleet/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_valid_grants_of_deactivated_accounts_are_listed(client, staff, password, alice, bob):
    """TURN REST credentials can't be revoked one by one: admin lists the ones a deactivated
    account still holds, so an operator can rotate those relays' secrets."""
    from relays.models import CredentialGrant

    now = timezone.now()
    r = Relay.objects.create(name="g-relay", urls=["turn:8.8.8.8:3478"], secret="x" * 20)
    live = CredentialGrant.objects.create(user=alice, expires_at=now + timezone.timedelta(hours=1))
    live.relays.set([r])
    CredentialGrant.objects.create(user=alice, expires_at=now - timezone.timedelta(hours=1))
    CredentialGrant.objects.create(user=bob, expires_at=now + timezone.timedelta(hours=1))
    alice.is_active = False
    alice.save()
    client.login(username="root", password=password)
    html = client.get(
        "/admin/relays/credentialgrant/", {"holder": "deactivated-valid"}
    ).content.decode()
    assert live.id in html and "g-relay" in html
    assert "1 credential grant" in html  # not the expired one, not bob's


def test_the_load_says_where_it_comes_from_and_the_bytes_relayed(
    client, staff, password, relay, alice, settings
):
    from datetime import timedelta

    from relays.models import CredentialGrant, GrantTraffic

    client.login(username="root", password=password)
    Relay.objects.filter(pk=relay.pk).update(capacity=10)
    grant = CredentialGrant.objects.create(
        user=alice, expires_at=timezone.now() + timedelta(hours=1)
    )
    grant.relays.set([relay])
    change = f"/admin/relays/relay/{relay.pk}/change/"

    html = client.get(change).content.decode()
    assert "1 of 10 (10%), unexpired grants (the relay publishes no allocations" in html

    Relay.objects.filter(pk=relay.pk).update(live_allocations=7, stats_at=timezone.now())
    now = timezone.now()
    GrantTraffic.objects.create(
        grant_id=grant.pk,
        relay=relay,
        user=alice,
        received_bytes=1_500_000,
        sent_bytes=500_000,
        allocations=2,
        first_at=now,
        last_at=now,
    )
    html = client.get(change).content.decode()
    assert "7 of 10 (70%), live allocations, as the relay published them" in html
    assert "1.9\xa0MB relayed in the last 24 h" in html
    fleet = client.get("/admin/relays/relay/fleet/").content.decode()
    assert "7 of 10 allocations" in fleet

    long_ago = timezone.now() - timedelta(seconds=10 * settings.RELAY_SWEEP_INTERVAL)
    Relay.objects.filter(pk=relay.pk).update(stats_at=long_ago)
    html = client.get(change).content.decode()
    assert "1 of 10 (10%), unexpired grants (the relay stopped publishing" in html
    listed = client.get("/admin/relays/granttraffic/").content.decode()
    assert grant.pk in listed and "1.4\xa0MB" in listed and "alice" in listed
