"""Writes to the relay registry: register, sweep, drain, rotate, prune, and issue credentials."""

from __future__ import annotations

import asyncio
import logging
import secrets as pysecrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .addresses import AddressFinding, describe, non_public_addresses
from .credentials import turn_rest_pair
from .health import Health, next_health, observe
from .ice_urls import IceUrlError
from .models import (
    MIN_SECRET_LENGTH,
    CredentialGrant,
    ProbeResult,
    Relay,
    RelayEvent,
    RelayEventKind,
    RelayStatus,
)
from .probes import ProbePlan, RelayReport, probe_relay
from .selectors import relay_latest_grant_expiry, select_relays_for

logger = logging.getLogger(__name__)

PROBE_CREDENTIAL_TTL = 120  # seconds; probes use their own short-lived TURN REST username


# --- registry -----------------------------------------------------------------------------
def _check_location(
    *, urls: list[str], allow_private: bool, private_reason: str
) -> list[AddressFinding]:
    """Raise ValidationError when the URLs resolve to non-public addresses (or don't resolve)
    and that was not allowed, with a reason. Returns what was found."""
    try:
        findings = non_public_addresses(urls)
    except IceUrlError as exc:
        raise ValidationError({"urls": [str(exc)]}) from exc
    if findings and not allow_private:
        raise ValidationError(
            {
                "urls": [
                    f"Not a public address: {describe(findings)}. A relay on a private network "
                    "(a test rig, a lab) needs allow_private (--allow-private) and a reason."
                ]
            }
        )
    if findings and not private_reason.strip():
        raise ValidationError(
            {"private_reason": ["Say why this relay may have a non-public address."]}
        )
    return findings


def relay_validate(
    *, urls: list[str], secret: str, allow_private: bool = False, private_reason: str = ""
) -> list[AddressFinding]:
    """The registry's rules, for forms that want the errors before saving: URLs that parse, a
    secret of at least MIN_SECRET_LENGTH characters, and a public address unless allowed.
    Returns the non-public addresses found (allowed ones)."""
    errors: dict[str, list[str]] = {}
    findings: list[AddressFinding] = []
    if len(secret) < MIN_SECRET_LENGTH:
        errors["secret"] = [f"Use a secret of at least {MIN_SECRET_LENGTH} characters."]
    try:
        findings = _check_location(
            urls=urls, allow_private=allow_private, private_reason=private_reason
        )
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return findings


def relay_create(
    *,
    name: str,
    urls: list[str],
    secret: str,
    region: str = "",
    realm: str = "",
    enabled: bool = True,
    unsafe_override: bool = False,
    allow_private: bool = False,
    private_reason: str = "",
    actor=None,
) -> Relay:
    """Register a relay, and record it as an event (with the reason, when its address is not
    public). Raises ValidationError on bad URLs, a short secret, a duplicate name, or a
    non-public address that was not allowed."""
    findings = relay_validate(
        urls=urls, secret=secret, allow_private=allow_private, private_reason=private_reason
    )
    relay = Relay(
        name=name,
        urls=urls,
        secret=secret,
        region=region,
        realm=realm,
        enabled=enabled,
        unsafe_override=unsafe_override,
        allow_private=allow_private,
    )
    relay.full_clean()
    with transaction.atomic():
        relay.save()
        _event(relay, RelayEventKind.CREATED, actor=actor, detail=" ".join(urls)).save()
        if findings:
            detail = f"{describe(findings)}: {private_reason.strip()}"
            _event(relay, RelayEventKind.ALLOW_PRIVATE, actor=actor, detail=detail).save()
    logger.info("relay registered: %s %s", relay.name, relay.urls)
    return relay


def relay_update(
    *,
    relay: Relay,
    urls: list[str],
    secret: str,
    region: str = "",
    realm: str = "",
    name: str | None = None,
    allow_private: bool | None = None,
    private_reason: str = "",
    actor=None,
) -> Relay:
    """Change a relay's URLs, secret, region and realm at once (provisioning scripts, admin). A
    new secret takes effect immediately; to change it without breaking calls, stage a next
    secret. The deep checks (and the safety audit) run again at the next sweep. Every change is
    recorded as an event. Raises ValidationError as relay_create does."""
    allow_private = relay.allow_private if allow_private is None else allow_private
    findings = relay_validate(
        urls=urls,
        secret=secret,
        allow_private=allow_private,
        private_reason=private_reason or ("allowed before" if relay.allow_private else ""),
    )
    changed = relay.urls != urls or relay.secret != secret
    what = [
        label
        for label, before, after in (
            ("name", relay.name, name if name is not None else relay.name),
            ("URLs", relay.urls, urls),
            ("secret", relay.secret, secret),
            ("region", relay.region, region),
            ("realm", relay.realm, realm),
            ("allow_private", relay.allow_private, allow_private),
        )
        if before != after
    ]
    newly_private = allow_private and not relay.allow_private
    if name is not None:
        relay.name = name
    relay.urls, relay.secret, relay.region, relay.realm = urls, secret, region, realm
    relay.allow_private = allow_private
    relay.full_clean()
    with transaction.atomic():
        relay.save(
            update_fields=[
                "name",
                "urls",
                "secret",
                "region",
                "realm",
                "allow_private",
                "updated_at",
            ]
        )
        if what:
            _event(relay, RelayEventKind.UPDATED, actor=actor, detail=", ".join(what)).save()
        if newly_private and findings:
            detail = f"{describe(findings)}: {private_reason.strip()}"
            _event(relay, RelayEventKind.ALLOW_PRIVATE, actor=actor, detail=detail).save()
        if changed:
            relay_config_changed(relay=relay)
    if what:
        logger.info("relay updated: %s (%s)", relay.name, ", ".join(what))
    return relay


def relay_remove(*, name: str) -> bool:
    """Remove a relay by name. Returns False when there was none."""
    deleted, _ = Relay.objects.filter(name=name).delete()
    if deleted:
        logger.info("relay removed: %s", name)
    return bool(deleted)


def _event(relay: Relay, kind: str, *, actor=None, detail: str = "", at=None) -> RelayEvent:
    event = RelayEvent(relay=relay, kind=kind, actor=actor, detail=detail, at=at or timezone.now())
    who = f" by {actor.get_username()}" if actor is not None else ""
    log = logger.warning if kind in ("down", "degraded", "unsafe") else logger.info
    log("relay %s: %s%s %s", relay.name, kind, who, detail)
    return event


def _admin_change(relay: Relay, kind: str, actor, detail: str = "", **fields) -> Relay:
    with transaction.atomic():
        for name, value in fields.items():
            setattr(relay, name, value)
        relay.save(update_fields=[*fields, "updated_at"])
        _event(relay, kind, actor=actor, detail=detail).save()
    return relay


def relay_drain(*, relay: Relay, actor) -> Relay:
    """No new assignments; the credentials already handed out run out on their own."""
    return _admin_change(relay, RelayEventKind.DRAINED, actor, draining=True)


def relay_disable(*, relay: Relay, actor) -> Relay:
    """No probes and no assignments until re-enabled."""
    return _admin_change(relay, RelayEventKind.DISABLED, actor, enabled=False)


def relay_enable(*, relay: Relay, actor) -> Relay:
    """Back in service: enabled and not draining. Its health is probed again from unknown."""
    return _admin_change(
        relay,
        RelayEventKind.ENABLED,
        actor,
        enabled=True,
        draining=False,
        status=RelayStatus.UNKNOWN,
        worse_streak=0,
        better_streak=0,
        deep_checked_at=None,
    )


def relay_set_unsafe_override(*, relay: Relay, override: bool, actor, reason: str = "") -> Relay:
    """Let an admin assign a relay the audit flags unsafe (test rigs on loopback only)."""
    detail = ("override on" if override else "override off") + (f": {reason}" if reason else "")
    return _admin_change(
        relay, RelayEventKind.OVERRIDE, actor, detail=detail, unsafe_override=override
    )


def relay_stage_next_secret(*, relay: Relay, secret: str, actor=None) -> Relay:
    """Stage the secret to rotate to. Issuing switches once a probe with it succeeds."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValidationError(
            {"next_secret": [f"Use a secret of at least {MIN_SECRET_LENGTH} characters."]}
        )
    return _admin_change(relay, RelayEventKind.SECRET_STAGED, actor, next_secret=secret)


def relay_config_changed(*, relay: Relay) -> None:
    """URLs or secret changed: run the deep checks at the next sweep, not an interval later, and
    audit again before the relay is handed out."""
    Relay.objects.filter(pk=relay.pk).update(deep_checked_at=None, audited_at=None)
    relay.deep_checked_at = relay.audited_at = None


# --- sweeps -------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    relay: Relay
    report: RelayReport
    observation: str
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


def _plan(relay: Relay, *, now, timeout: float) -> ProbePlan:
    deep_due = relay.deep_checked_at is None or (
        (now - relay.deep_checked_at).total_seconds() >= settings.RELAY_DEEP_CHECK_INTERVAL
    )
    opaque = f"probe-{relay.name}"
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


async def _probe_all(
    relays: list[Relay],
    plans: list[ProbePlan],
    on_result: Callable[[Relay, RelayReport], None] | None,
) -> list[RelayReport]:
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
    plans = [_plan(r, now=now, timeout=timeout) for r in relays]
    reports = asyncio.run(_probe_all(relays, plans, on_result))
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


def relay_record_probes(
    *, relays: list[Relay], plans: list[ProbePlan], reports: list[RelayReport], checked_at
) -> list[SweepOutcome]:
    """Store probe results, move each relay's health, and record what changed as events."""
    outcomes: list[SweepOutcome] = []
    results: list[ProbeResult] = []
    events: list[RelayEvent] = []
    for relay, plan, report in zip(relays, plans, reports, strict=True):
        observation = observe(
            report, max_loss=settings.RELAY_DEGRADED_LOSS, max_rtt_ms=settings.RELAY_DEGRADED_RTT_MS
        )
        outcome = SweepOutcome(
            relay=relay, report=report, observation=observation, previous_status=relay.status
        )
        health = next_health(
            Health(relay.status, relay.worse_streak, relay.better_streak),
            observation,
            down_after=settings.RELAY_DOWN_AFTER,
            up_after=settings.RELAY_UP_AFTER,
        )
        dp = report.data_plane
        results.append(
            ProbeResult(
                relay=relay,
                checked_at=checked_at,
                ok=report.ok,
                observation=observation,
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
        if health.status != relay.status:
            outcome.events.append(
                _event(
                    relay, health.status, detail=report.error or "all checks passed", at=checked_at
                )
            )
        relay.status, relay.worse_streak, relay.better_streak = (
            health.status,
            health.worse_streak,
            health.better_streak,
        )
        relay.transport_status = {
            k: "up" if ok else "down" for k, ok in report.transports().items()
        }
        relay.last_rtt_ms = report.rtt_ms
        if dp is not None and not dp.not_measurable:
            relay.last_loss, relay.last_jitter_ms = dp.loss, dp.jitter_ms
        relay.last_checked_at = checked_at
        relay.last_error = report.error
        relay.updated_at = checked_at
        if plan.audit and report.audit is not None and report.audit.ran:
            if report.audit.unsafe != relay.unsafe or (
                report.audit.unsafe and report.audit.accepted != relay.accepted_peers
            ):
                kind = RelayEventKind.UNSAFE if report.audit.unsafe else RelayEventKind.SAFE
                detail = (
                    f"accepts peers {', '.join(report.audit.accepted)}"
                    if report.audit.unsafe
                    else ""
                )
                outcome.events.append(_event(relay, kind, detail=detail, at=checked_at))
            relay.unsafe = report.audit.unsafe
            relay.accepted_peers = report.audit.accepted
            relay.audited_at = checked_at
        if (plan.audit or plan.packets or plan.check_credentials) and not report.deep_timed_out:
            relay.deep_checked_at = checked_at  # (when they timed out, they run again next sweep)
        if report.next_secret_ok and relay.next_secret:
            until = relay_latest_grant_expiry(relay=relay) or checked_at
            relay.previous_secret, relay.previous_secret_until = (
                relay.secret,
                max(until, checked_at),
            )
            relay.secret, relay.next_secret = relay.next_secret, ""
            outcome.events.append(
                _event(
                    relay,
                    RelayEventKind.SECRET_ROTATED,
                    at=checked_at,
                    detail=f"issuing with the new secret; the old one is kept until {relay.previous_secret_until:%Y-%m-%d %H:%M:%S}Z",
                )
            )
        events.extend(outcome.events)
        outcomes.append(outcome)
    with transaction.atomic():
        ProbeResult.objects.bulk_create(results)
        _update_relays(relays, _RELAY_FIELDS)
        RelayEvent.objects.bulk_create(events)
    return outcomes


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
    return {
        "probe_results_deleted": deleted,
        "old_secrets_forgotten": forgotten,
        "grants_deleted": grants,
    }


# --- issuing ------------------------------------------------------------------------------
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
    with transaction.atomic():  # a grant is never stored without its relays
        grant = CredentialGrant.objects.create(user=user, expires_at=expires_at)
        grant.relays.set(relays)
    expiry = int(expires_at.timestamp())
    for relay in relays:
        username, credential = turn_rest_pair(
            secret=relay.secret, expires_at=expiry, opaque_id=grant.id
        )
        payload["iceServers"].append(
            {"urls": list(relay.urls), "username": username, "credential": credential}
        )
        payload["relays"].append({"id": str(relay.id), "name": relay.name, "region": relay.region})
    return payload
