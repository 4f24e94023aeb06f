"""Reads of the relay registry: which relays may be handed out right now, and their history."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Case, F, IntegerField, Max, Q, QuerySet, Value, When
from django.utils import timezone

from .models import CredentialGrant, ProbeResult, Relay, RelayStatus
from .states import stale_after


def relays_assignable(*, now=None) -> QuerySet[Relay]:
    """Relays that may be handed out, best first: up before degraded, then lowest recent RTT.

    Never handed out: down, unknown, disabled, draining, not audited yet or unsafe (unless an
    admin overrode the audit), or stale (no probe newer than three sweep intervals, so we no
    longer know it works).
    """
    now = now or timezone.now()
    fresh_after = now - stale_after(settings.RELAY_SWEEP_INTERVAL)
    return (
        Relay.objects.filter(
            enabled=True,
            draining=False,
            status__in=[RelayStatus.UP, RelayStatus.DEGRADED],
            last_checked_at__gte=fresh_after,
        )
        .filter(Q(unsafe=False, audited_at__isnull=False) | Q(unsafe_override=True))
        .annotate(
            health_rank=Case(
                When(status=RelayStatus.UP, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .order_by("health_rank", F("last_rtt_ms").asc(nulls_last=True), "name")
    )


def select_relays_for(*, user, limit: int | None = None) -> list[Relay]:
    """The best relays for this caller: healthy first, then lowest recent RTT.

    `user` is here for the later steps of selection (region, load); for now every caller
    gets the same ranking.
    """
    limit = limit or settings.RELAYS_PER_CALLER
    chosen: list[Relay] = []
    for relay in relays_assignable().iterator(chunk_size=50):
        if relay.has_turn_url:  # a STUN-only entry relays nothing
            chosen.append(relay)
            if len(chosen) == limit:
                break
    return chosen


def relay_latest_grant_expiry(*, relay: Relay):
    """When the last credential issued for this relay expires (None when none was issued)."""
    return CredentialGrant.objects.filter(relays=relay).aggregate(m=Max("expires_at"))["m"]


def relay_probe_history(*, relay: Relay, hours: float = 6) -> list[ProbeResult]:
    since = timezone.now() - timedelta(hours=hours)
    return list(
        ProbeResult.objects.filter(relay=relay, checked_at__gte=since)
        .only("checked_at", "ok", "observation", "rtt_ms", "loss", "jitter_ms")
        .order_by("checked_at")
    )
