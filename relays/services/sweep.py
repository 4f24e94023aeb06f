"""Sweeps: the pipeline the Celery task runs every RELAY_SWEEP_INTERVAL, in four public steps.

    relays_claim -> probe_plan -> relays_probe -> relay_record_probes

`relay_sweep` runs them in order; the benchmark (benchmarks/relay_sweep.py) times the probing
steps alone. What a probe means for a relay is decided in relays.decisions, with no database;
this module reads the relays and stores the decisions.
"""

from __future__ import annotations

import asyncio
import functools
import secrets as pysecrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from integrations.webhooks import webhook_emit

from ..allocations import probe_opaque_id
from ..credentials import turn_rest_pair
from ..decisions import Checks, RelaySnapshot, Thresholds, decide
from ..models import ProbeResult, Relay, RelayEvent, RelayEventKind, RelayStatus
from ..probes import ProbePlan, RelayReport, probe_relay
from ..selectors import relay_latest_grant_expiry
from ..snapshot import fleet_changed
from ..states import Observation
from .registry import relay_event

PROBE_CREDENTIAL_TTL = 120  # seconds; probes use their own short-lived TURN REST username


@dataclass
class SweepOutcome:
    relay: Relay
    report: RelayReport
    observation: Observation
    previous_status: str
    events: list[RelayEvent] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return self.report.duration_ms


def relays_claim(*, relay_ids=None, now, force: bool = False) -> list[Relay]:
    """Claim the enabled relays nobody has claimed this interval, in one conditional UPDATE.

    Several workers can sweep at once: each relay is probed by whichever claims it first, and by
    no one else until the claim runs out (just under one interval). `force` (a person asked,
    from admin or the CLI) takes relays whatever their claim.
    """
    token = pysecrets.token_hex(8)
    qs = Relay.objects.filter(enabled=True)
    if relay_ids is not None:
        qs = qs.filter(pk__in=list(relay_ids))
    if not force:
        qs = qs.filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
    qs.update(
        claimed_until=now + timedelta(seconds=0.9 * settings.RELAY_SWEEP_INTERVAL),
        claim_token=token,
    )
    return list(Relay.objects.filter(claim_token=token).order_by("name"))


def probe_plan(relay: Relay, *, now, timeout: float) -> ProbePlan:
    """What this sweep checks on `relay`: its URLs always; the data plane, the safety audit and
    the credential checks when they are due (every RELAY_DEEP_CHECK_INTERVAL, or at once after
    its URLs or secret changed); the staged secret while there is one."""
    deep_due = relay.deep_checked_at is None or (
        (now - relay.deep_checked_at).total_seconds() >= settings.RELAY_DEEP_CHECK_INTERVAL
    )
    opaque = probe_opaque_id(relay.pk.hex)  # its allocations tell that the relay publishes
    secret, next_secret = relay.secret, relay.next_secret

    def creds(expires_at: int, _secret=secret) -> tuple[str, str]:
        return turn_rest_pair(secret=_secret, expires_at=expires_at, opaque_id=opaque)

    def next_creds(expires_at: int) -> tuple[str, str]:
        return turn_rest_pair(secret=next_secret, expires_at=expires_at, opaque_id=opaque)

    return ProbePlan(
        urls=relay.ice_urls(),
        credentials=creds,
        timeout=timeout,
        verify_tls=settings.RELAY_PROBE_VERIFY_TLS,
        packets=settings.RELAY_DATA_PLANE_PACKETS if deep_due else 0,
        audit=deep_due,
        check_credentials=deep_due,
        next_credentials=next_creds if next_secret else None,
        credential_ttl=PROBE_CREDENTIAL_TTL,
    )


async def relays_probe(
    relays: list[Relay],
    plans: list[ProbePlan],
    on_result: Callable[[Relay, RelayReport], None] | None = None,
) -> list[RelayReport]:
    """Run the plans concurrently, with no database connection held."""
    # A cap on probes in flight keeps a large fleet within the worker's file descriptors; it is
    # far above the number of dead relays a sweep should meet, so they can't delay the rest.
    limit = (
        asyncio.Semaphore(settings.RELAY_SWEEP_CONCURRENCY)
        if len(relays) > settings.RELAY_SWEEP_CONCURRENCY
        else None
    )

    async def one(relay: Relay, plan: ProbePlan) -> RelayReport:
        if limit is None:
            report = await probe_relay(plan)
        else:
            async with limit:
                report = await probe_relay(plan)
        if on_result is not None:
            on_result(relay, report)
        return report

    return list(await asyncio.gather(*(one(r, p) for r, p in zip(relays, plans, strict=True))))


def relay_sweep(
    *,
    relay_ids=None,
    timeout: float | None = None,
    force: bool = False,
    on_result: Callable[[Relay, RelayReport], None] | None = None,
) -> list[SweepOutcome]:
    """Probe the claimed relays concurrently, then store what was found.

    The probes run with no database connection held; the results are then written in one
    transaction with a fixed number of statements (bulk insert and update), whatever the fleet
    size. Wall time is bounded by the probe timeout, however many relays are dead.
    """
    now = timezone.now()
    relays = relays_claim(relay_ids=relay_ids, now=now, force=force)
    if not relays:
        return []
    timeout = timeout or settings.RELAY_PROBE_TIMEOUT
    plans = [probe_plan(r, now=now, timeout=timeout) for r in relays]
    reports = asyncio.run(relays_probe(relays, plans, on_result))
    return relay_record_probes(
        relays=relays, plans=plans, reports=reports, checked_at=timezone.now()
    )


_RELAY_FIELDS = [
    "status",
    "worse_streak",
    "better_streak",
    "transport_status",
    "last_rtt_ms",
    "last_loss",
    "last_jitter_ms",
    "last_checked_at",
    "last_error",
    "unsafe",
    "accepted_peers",
    "deep_checked_at",
    "audited_at",
    "secret",
    "next_secret",
    "previous_secret",
    "previous_secret_until",
    "updated_at",
]


WEBHOOK_KINDS = (RelayEventKind.UP, RelayEventKind.DOWN, RelayEventKind.UNSAFE)


def _update_relays(relays: list[Relay], names: list[str]) -> None:
    """One prepared UPDATE run for every relay (executemany).

    Written by hand because bulk_update builds a CASE WHEN expression per field per row: on a
    1,000-relay sweep that cost 2 ms of CPU per relay, twice the whole budget of a probe.
    """
    fields = [f for f in Relay._meta.concrete_fields if f.name in names]
    quote = connection.ops.quote_name
    pk = Relay._meta.pk
    assert pk is not None
    assignments = ", ".join(f"{quote(cast(str, f.column))} = %s" for f in fields)
    sql = f"UPDATE {quote(Relay._meta.db_table)} SET {assignments} WHERE {quote(cast(str, pk.column))} = %s"
    rows = [
        [f.get_db_prep_save(getattr(r, f.attname), connection) for f in fields]
        + [pk.get_db_prep_value(r.pk, connection)]
        for r in relays
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _snapshot(relay: Relay) -> RelaySnapshot:
    return RelaySnapshot(
        name=relay.name,
        status=RelayStatus(relay.status),
        worse_streak=relay.worse_streak,
        better_streak=relay.better_streak,
        unsafe=relay.unsafe,
        accepted_peers=tuple(relay.accepted_peers or ()),
        secret=relay.secret,
        next_secret=relay.next_secret,
    )


def relay_record_probes(
    *, relays: list[Relay], plans: list[ProbePlan], reports: list[RelayReport], checked_at
) -> list[SweepOutcome]:
    """Store what the probes found: each relay's decision (relays.decisions), its probe result
    and its events, in one transaction with a fixed number of statements."""
    thresholds = Thresholds(
        max_loss=settings.RELAY_DEGRADED_LOSS,
        max_rtt_ms=settings.RELAY_DEGRADED_RTT_MS,
        down_after=settings.RELAY_DOWN_AFTER,
        up_after=settings.RELAY_UP_AFTER,
    )
    outcomes: list[SweepOutcome] = []
    results: list[ProbeResult] = []
    events: list[RelayEvent] = []
    for relay, plan, report in zip(relays, plans, reports, strict=True):
        decision = decide(
            _snapshot(relay),
            report,
            checks=Checks(
                audit=plan.audit,
                data_plane=plan.packets > 0,
                credentials=plan.check_credentials,
            ),
            checked_at=checked_at,
            thresholds=thresholds,
            grants_valid_until=functools.partial(relay_latest_grant_expiry, relay=relay),
        )
        outcome = SweepOutcome(
            relay=relay,
            report=report,
            observation=decision.observation,
            previous_status=relay.status,
        )
        dp = report.data_plane
        results.append(
            ProbeResult(
                relay=relay,
                checked_at=checked_at,
                ok=report.ok,
                observation=decision.observation,
                rtt_ms=report.rtt_ms,
                loss=dp.loss if dp else None,
                jitter_ms=dp.jitter_ms if dp else None,
                duration_ms=report.duration_ms,
                error=report.error,
                urls=[r.as_dict() for r in report.results],
                data_plane=dp.as_dict() if dp else None,
                audit=report.audit.as_dict() if report.audit else None,
                credentials=report.credentials.as_dict() if report.credentials else None,
            )
        )
        for name, value in decision.fields.items():
            setattr(relay, name, value)
        outcome.events = [
            relay_event(relay, kind, detail=detail, at=checked_at)
            for kind, detail in decision.events
        ]
        events.extend(outcome.events)
        outcomes.append(outcome)
    with transaction.atomic():
        ProbeResult.objects.bulk_create(results)
        _update_relays(relays, _RELAY_FIELDS)
        RelayEvent.objects.bulk_create(events)
        for event in events:  # in the same transaction: the outbox (integrations.webhooks)
            if event.kind in WEBHOOK_KINDS:
                webhook_emit(
                    f"relay.{event.kind}",
                    {
                        "relay": {
                            "id": str(event.relay.pk),
                            "name": event.relay.name,
                            "region": event.relay.region,
                        },
                        "detail": event.detail,
                        "at": event.at.isoformat(),
                    },
                    relay_event=event,
                )
    fleet_changed()  # a forced probe (admin, a client's report) shows in this process at once
    return outcomes
