"""Reads of the relay registry: which relays may be handed out right now."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import F, QuerySet
from django.utils import timezone

from .models import Relay, RelayStatus


def relays_assignable(*, now=None) -> QuerySet[Relay]:
    """Enabled relays that are up on a fresh probe, best first (lowest recent RTT).

    A relay whose last probe is older than three sweep intervals is stale: we no longer know
    that it works, so it is never handed out, whatever its stored status says.
    """
    now = now or timezone.now()
    fresh_after = now - timedelta(seconds=3 * settings.RELAY_SWEEP_INTERVAL)
    return Relay.objects.filter(
        enabled=True, status=RelayStatus.UP, last_checked_at__gte=fresh_after
    ).order_by(F("last_rtt_ms").asc(nulls_last=True), "name")


def select_relays_for(*, user, limit: int | None = None) -> list[Relay]:
    """The best relays for this caller: healthy first, then lowest recent RTT.

    `user` is here for the later steps of selection (region, load); for now every caller
    gets the same ranking.
    """
    limit = limit or settings.RELAYS_PER_CALLER
    return list(relays_assignable()[:limit])


def relays_for_sweep(*, relay_ids=None) -> QuerySet[Relay]:
    qs = Relay.objects.filter(enabled=True)
    if relay_ids is not None:
        qs = qs.filter(pk__in=list(relay_ids))
    return qs
