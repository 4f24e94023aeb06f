"""What clients measured: the round trip through a relay, per network (relays.scoring)."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import ClientRelayRtt, Relay
from ..scoring import blend, decayed_weight
from ..selectors import client_rtt_half_life

MAX_CLIENT_RTT_MS = 10_000.0  # a report beyond this is a stalled page, not a network


def relay_rtt_observe(
    *, relay: Relay, network: str, rtt_ms: float, now=None
) -> ClientRelayRtt | None:
    """One client on `network` measured `rtt_ms` through `relay`: fold it into that network's
    figure (older samples weigh less, halving every CLIENT_RTT_HALF_LIFE_HOURS). None when there
    is nothing to learn from (no network, or a figure out of range)."""
    if not network or not 0 <= rtt_ms <= MAX_CLIENT_RTT_MS:
        return None
    now = now or timezone.now()
    for _ in range(2):  # two first reports at once: one creates the row, the other folds in
        with transaction.atomic():
            row = (
                ClientRelayRtt.objects.select_for_update()
                .filter(network=network, relay=relay)
                .first()
            )
            if row is None:
                try:
                    with transaction.atomic():
                        return ClientRelayRtt.objects.create(
                            network=network,
                            relay=relay,
                            rtt_ms=rtt_ms,
                            weight=1.0,
                            samples=1,
                            updated_at=now,
                        )
                except IntegrityError:
                    continue
            weight = decayed_weight(
                row.weight, age=now - row.updated_at, half_life=client_rtt_half_life()
            )
            row.rtt_ms, row.weight = blend(row.rtt_ms, weight, rtt_ms)
            row.samples += 1
            row.updated_at = now
            row.save(update_fields=["rtt_ms", "weight", "samples", "updated_at"])
            return row
    return None
