"""Pruning: the registry's history is kept for a while, then let go."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ..models import (
    ClientRelayRtt,
    CredentialGrant,
    GrantTraffic,
    NetworkTestResult,
    ProbeResult,
    Relay,
)


def relay_prune_history(*, now=None) -> dict:
    """Delete probe results older than the retention window and credential grants long expired
    (kept a while so relay logs can be traced to a caller); forget old secrets whose credentials
    have all expired."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RELAY_PROBE_RETENTION_HOURS)
    deleted, _ = ProbeResult.objects.filter(checked_at__lt=cutoff).delete()
    grants, _ = CredentialGrant.objects.filter(
        expires_at__lt=now - timedelta(days=settings.CREDENTIAL_GRANT_RETENTION_DAYS)
    ).delete()
    forgotten = (
        Relay.objects.filter(previous_secret_until__lt=now)
        .exclude(previous_secret="")
        .update(previous_secret="", previous_secret_until=None)
    )
    rtts, _ = ClientRelayRtt.objects.filter(
        updated_at__lt=now - timedelta(days=settings.CLIENT_RTT_RETENTION_DAYS)
    ).delete()
    traffic, _ = GrantTraffic.objects.filter(
        last_at__lt=now - timedelta(days=settings.RELAY_TRAFFIC_RETENTION_DAYS)
    ).delete()
    network_tests, _ = NetworkTestResult.objects.filter(
        created_at__lt=now - timedelta(days=settings.NETWORK_TEST_RETENTION_DAYS)
    ).delete()
    return {
        "network_tests_deleted": network_tests,
        "client_rtts_deleted": rtts,
        "traffic_rows_deleted": traffic,
        "probe_results_deleted": deleted,
        "old_secrets_forgotten": forgotten,
        "grants_deleted": grants,
    }
