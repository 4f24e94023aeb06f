"""Writes to the relay registry: register and remove relays, sweep them, issue credentials."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .credentials import turn_rest_pair
from .models import CredentialGrant, ProbeResult, Relay, RelayStatus
from .probes import RelayReport, probe_relay
from .selectors import relays_for_sweep, select_relays_for

logger = logging.getLogger(__name__)

PROBE_CREDENTIAL_TTL = 120  # seconds; probes use their own short-lived TURN REST username


def relay_create(
    *,
    name: str,
    urls: list[str],
    secret: str,
    region: str = "",
    realm: str = "",
    enabled: bool = True,
) -> Relay:
    """Register a relay. Raises ValidationError on bad URLs or a duplicate name."""
    relay = Relay(name=name, urls=urls, secret=secret, region=region, realm=realm, enabled=enabled)
    relay.full_clean()
    relay.save()
    logger.info("relay registered: %s %s", relay.name, relay.urls)
    return relay


def relay_remove(*, name: str) -> bool:
    """Remove a relay by name. Returns False when there was none."""
    deleted, _ = Relay.objects.filter(name=name).delete()
    if deleted:
        logger.info("relay removed: %s", name)
    return bool(deleted)


@dataclass
class SweepOutcome:
    relay: Relay
    report: RelayReport
    duration_ms: float
    previous_status: str


async def _probe_all(relays: list[Relay], timeout: float) -> list[tuple[RelayReport, float]]:
    expires = int(time.time()) + PROBE_CREDENTIAL_TTL

    async def one(relay: Relay) -> tuple[RelayReport, float]:
        username, password = turn_rest_pair(
            secret=relay.secret, expires_at=expires, opaque_id=f"probe-{relay.name}"
        )
        t0 = time.perf_counter()
        report = await probe_relay(
            relay.ice_urls(),
            username=username,
            password=password,
            timeout=timeout,
            verify_tls=settings.RELAY_PROBE_VERIFY_TLS,
        )
        return report, (time.perf_counter() - t0) * 1000

    return list(await asyncio.gather(*(one(r) for r in relays)))


def relay_sweep(*, relay_ids=None, timeout: float | None = None) -> list[SweepOutcome]:
    """Probe every enabled relay (or the given ones) concurrently, then store what was found.

    The probes run first, with no database connection held; the results are then written in one
    transaction. Wall time is bounded by the probe timeout, however many relays are dead.
    """
    relays = list(relays_for_sweep(relay_ids=relay_ids))
    if not relays:
        return []
    timeout = timeout or settings.RELAY_PROBE_TIMEOUT
    measured = asyncio.run(_probe_all(relays, timeout))
    now = timezone.now()
    outcomes = []
    with transaction.atomic():
        for relay, (report, duration_ms) in zip(relays, measured, strict=True):
            outcomes.append(
                relay_record_probe(
                    relay=relay, report=report, duration_ms=duration_ms, checked_at=now
                )
            )
    return outcomes


def relay_record_probe(
    *, relay: Relay, report: RelayReport, duration_ms: float, checked_at
) -> SweepOutcome:
    """Store one probe and move the relay's health status to what it found."""
    previous = relay.status
    ProbeResult.objects.create(
        relay=relay,
        checked_at=checked_at,
        ok=report.ok,
        rtt_ms=report.rtt_ms,
        duration_ms=round(duration_ms, 3),
        error=report.error,
        urls=[r.as_dict() for r in report.results],
    )
    relay.status = RelayStatus.UP if report.ok else RelayStatus.DOWN
    relay.last_rtt_ms = report.rtt_ms
    relay.last_checked_at = checked_at
    relay.last_error = report.error
    Relay.objects.filter(pk=relay.pk).update(
        status=relay.status,
        last_rtt_ms=relay.last_rtt_ms,
        last_checked_at=checked_at,
        last_error=relay.last_error,
        updated_at=checked_at,
    )
    if previous != relay.status:
        log = logger.info if relay.status == RelayStatus.UP else logger.warning
        log("relay %s: %s -> %s %s", relay.name, previous, relay.status, relay.last_error)
    return SweepOutcome(
        relay=relay, report=report, duration_ms=duration_ms, previous_status=previous
    )


def ice_servers_issue(*, user) -> dict:
    """Choose the best relays for this user and issue TURN REST credentials for them.

    Returns the shape that `new RTCPeerConnection({iceServers})` takes, plus ttl, expiry, refresh
    time and the relays chosen. With no healthy relay, iceServers is empty and `status` says so:
    the caller can still connect directly where the network allows it.
    """
    ttl = settings.TURN_CREDENTIAL_TTL
    now = timezone.now()
    expires_at = now + timedelta(seconds=ttl)
    relays = select_relays_for(user=user)
    payload: dict = {
        "iceServers": [],
        "ttl": ttl,
        "expiresAt": expires_at.isoformat(),
        "refreshAt": (now + timedelta(seconds=int(ttl * 0.8))).isoformat(),
        "relays": [],
        "status": "ok" if relays else "no-healthy-relay",
    }
    if not relays:
        logger.warning("no healthy relay to assign to user %s", user.pk)
        return payload
    grant = CredentialGrant.objects.create(user=user, expires_at=expires_at)
    grant.relays.set(relays)
    for relay in relays:
        username, credential = turn_rest_pair(
            secret=relay.secret, expires_at=int(expires_at.timestamp()), opaque_id=grant.id
        )
        payload["iceServers"].append(
            {"urls": list(relay.urls), "username": username, "credential": credential}
        )
        payload["relays"].append({"id": str(relay.id), "name": relay.name, "region": relay.region})
    return payload
