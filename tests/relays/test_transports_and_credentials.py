"""TLS relays, clock skew told apart from a bad secret, and secret rotation."""

from datetime import timedelta

import pytest
from django.utils import timezone

from relays.models import CredentialGrant, Relay, RelayEvent
from relays.services import (
    ice_servers_issue,
    relay_create,
    relay_prune_history,
    relay_stage_next_secret,
    relay_sweep,
)
from tests.relays.conftest import probe

pytestmark = pytest.mark.django_db


def test_turns_over_tls_with_a_self_signed_certificate(coturn, settings):
    server = coturn(allow_loopback_peers=False, tls=True)
    tls_url = server.urls[2]
    assert tls_url.startswith("turns:")
    report = probe([tls_url], server.secret, verify_tls=False)
    assert report.ok, report.error
    assert [(r.kind, r.transport) for r in report.results] == [("turn", "tls")]

    # Verifying the certificate (the default) refuses a self-signed one, with a clear class.
    refused = probe([tls_url], server.secret, verify_tls=True)
    assert not refused.ok and refused.results[0].error == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in refused.results[0].detail

    settings.RELAY_PROBE_VERIFY_TLS = False
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="tls",
        urls=server.urls,
        secret=server.secret,
    )
    relay_sweep()
    relay.refresh_from_db()
    assert relay.status == "up" and relay.transport_status == {
        "stun": "up",
        "udp": "up",
        "tcp": "up",
        "tls": "up",
    }


def test_a_relay_clock_that_runs_ahead_is_reported_as_clock_skew(coturn):
    # The relay's clock is 10 minutes ahead: every credential we issue looks expired to it.
    server = coturn(allow_loopback_peers=False, clock_offset="+600s")
    report = probe(server.urls, server.secret, check_credentials=True)
    assert not report.ok
    assert {r.error for r in report.results if r.kind == "turn"} == {"401"}
    assert report.credentials.clock_skew and "ahead" in report.credentials.clock_skew
    assert not report.credentials.bad_secret
    assert "clock skew" in report.error


def test_a_relay_clock_that_runs_behind_takes_expired_credentials(coturn):
    server = coturn(allow_loopback_peers=False, clock_offset="-600s")
    report = probe(server.urls, server.secret, check_credentials=True)
    assert report.ok
    assert report.credentials.expired_refused is False
    assert "behind" in report.credentials.clock_skew


def test_rotation_switches_only_after_the_next_secret_works(coturn, alice):
    # coturn is configured with both secrets during a rotation (two static-auth-secret lines).
    server = coturn(
        allow_loopback_peers=False,
        secret="old-secret-16-chars",
        extra_secrets=["new-secret-16-chars"],
    )
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="rot",
        urls=server.urls,
        secret="old-secret-16-chars",
    )
    relay_sweep()
    issued = ice_servers_issue(user=alice)
    grant_expiry = CredentialGrant.objects.get().expires_at

    relay_stage_next_secret(relay=relay, secret="not-on-the-relay")
    relay_sweep(force=True)
    relay.refresh_from_db()
    assert (
        relay.secret == "old-secret-16-chars" and relay.next_secret == "not-on-the-relay"
    )  # its probe failed

    relay_stage_next_secret(relay=relay, secret="new-secret-16-chars")
    relay_sweep(force=True)
    relay.refresh_from_db()
    assert relay.secret == "new-secret-16-chars" and relay.next_secret == ""
    assert (
        relay.previous_secret == "old-secret-16-chars"
        and relay.previous_secret_until == grant_expiry
    )
    kinds = list(RelayEvent.objects.filter(relay=relay).values_list("kind", flat=True))
    assert kinds.count("secret-staged") == 2 and kinds.count("secret-rotated") == 1

    # New credentials use the new secret; the ones already handed out keep working.
    fresh = ice_servers_issue(user=alice)["iceServers"][0]
    assert probe(fresh["urls"], "new-secret-16-chars").ok
    old = issued["iceServers"][0]
    from relays.credentials import turn_rest_credential

    assert old["credential"] == turn_rest_credential(
        secret="old-secret-16-chars", username=old["username"]
    )
    assert fresh["credential"] == turn_rest_credential(
        secret="new-secret-16-chars", username=fresh["username"]
    )

    # The old secret is forgotten once the last credential issued with it has expired.
    assert (
        relay_prune_history(now=grant_expiry - timedelta(seconds=1))["old_secrets_forgotten"] == 0
    )
    assert (
        relay_prune_history(now=grant_expiry + timedelta(seconds=1))["old_secrets_forgotten"] == 1
    )
    relay.refresh_from_db()
    assert relay.previous_secret == "" and relay.previous_secret_until is None


def test_probe_history_is_pruned_after_the_retention_window(registered, settings):
    settings.RELAY_PROBE_RETENTION_HOURS = 1
    relay, _ = registered("pruned")
    relay_sweep()
    relay_sweep(force=True)
    assert relay.probe_results.count() == 2
    relay.probe_results.update(checked_at=timezone.now() - timedelta(hours=2))
    relay_sweep(force=True)
    assert relay_prune_history()["probe_results_deleted"] == 2
    assert relay.probe_results.count() == 1
    assert Relay.objects.get(pk=relay.pk).status == "up"


def test_long_expired_credential_grants_are_pruned(alice, settings):
    settings.CREDENTIAL_GRANT_RETENTION_DAYS = 30
    now = timezone.now()
    old = CredentialGrant.objects.create(user=alice, expires_at=now - timedelta(days=31))
    recent = CredentialGrant.objects.create(user=alice, expires_at=now - timedelta(days=29))
    assert relay_prune_history(now=now)["grants_deleted"] >= 1
    assert not CredentialGrant.objects.filter(pk=old.pk).exists()
    assert CredentialGrant.objects.filter(pk=recent.pk).exists()  # still traceable in relay logs
