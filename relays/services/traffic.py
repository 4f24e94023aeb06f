"""What relays say about themselves (coturn's redis-statsdb, relays.allocations), written down:
live allocations per relay, and bytes per grant and relay."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction
from django.db.models import F

from ..allocations import Traffic
from ..models import CredentialGrant, GrantTraffic, Relay


def _relay_ids(keys) -> dict[str, uuid.UUID]:
    """relay key (hex) -> id, for relays that still exist."""
    wanted = {}
    for key in keys:
        try:
            wanted[key] = uuid.UUID(hex=key)
        except ValueError:
            continue
    found = set(Relay.objects.filter(pk__in=wanted.values()).values_list("pk", flat=True))
    return {k: v for k, v in wanted.items() if v in found}


def relay_load_record(
    *, counts: dict[str, int], relays: set[str], heard: set[str], now: datetime
) -> int:
    """Store the live allocations of `relays` (`counts`, by relay key; absent means none), and
    stamp those in `heard` as publishing now. Returns the relays written."""
    ids = _relay_ids(relays | heard)
    if not ids:
        return 0
    with transaction.atomic():
        stamped = [ids[k] for k in heard if k in ids]
        if stamped:
            Relay.objects.filter(pk__in=stamped).update(stats_at=now)
        by_count: dict[int, list[uuid.UUID]] = {}
        for key, relay_id in ids.items():
            by_count.setdefault(counts.get(key, 0), []).append(relay_id)
        for count, relay_ids in by_count.items():
            Relay.objects.filter(pk__in=relay_ids).exclude(live_allocations=count).update(
                live_allocations=count
            )
    return len(ids)


def grant_traffic_record(*, pending: dict[tuple[str, str], Traffic], now: datetime) -> int:
    """Add what coturn counted to each (grant, relay)'s row. Returns the rows written; traffic
    of relays that no longer exist is dropped."""
    if not pending:
        return 0
    ids = _relay_ids({relay_key for _, relay_key in pending})
    users = dict(
        CredentialGrant.objects.filter(pk__in={g for g, _ in pending}).values_list("pk", "user_id")
    )
    written = 0
    with transaction.atomic():
        for (grant, relay_key), t in sorted(pending.items()):
            relay_id = ids.get(relay_key)
            if relay_id is None:
                continue
            updated = GrantTraffic.objects.filter(grant_id=grant, relay_id=relay_id).update(
                received_bytes=F("received_bytes") + t.received,
                sent_bytes=F("sent_bytes") + t.sent,
                allocations=F("allocations") + t.allocations,
                last_at=now,
            )
            if not updated:
                GrantTraffic.objects.create(
                    grant_id=grant,
                    relay_id=relay_id,
                    user_id=users.get(grant),
                    received_bytes=t.received,
                    sent_bytes=t.sent,
                    allocations=t.allocations,
                    first_at=now,
                    last_at=now,
                )
            written += 1
    return written
