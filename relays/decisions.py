"""What one sweep means for one relay, with no Django in it.

A relay's snapshot (the stored fields a sweep reads) and its probe report go in; the new field
values and the events to record come out. relays.services.sweep stores them. Every transition
lives here, so each is tested without coturn and without a database: health (with its
hysteresis, relays.health), the safety audit's verdict, the deep checks' schedule (a check that
ran out of time runs again at the next sweep) and the promotion of a staged secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .health import Health, next_health, observe
from .probes import RelayReport
from .states import STATUS_EVENT, Observation, RelayEventKind, RelayStatus


@dataclass(frozen=True)
class Thresholds:
    max_loss: float  # data-plane loss (0..1) above which a relay is degraded
    max_rtt_ms: float  # data-plane round trip above which a relay is degraded
    down_after: int  # worse observations in a row before the status gets worse
    up_after: int  # better observations in a row before it gets better


@dataclass(frozen=True)
class RelaySnapshot:
    """The stored fields of a relay that a sweep reads."""

    name: str
    status: RelayStatus
    worse_streak: int = 0
    better_streak: int = 0
    unsafe: bool = False
    accepted_peers: tuple[str, ...] = ()
    secret: str = ""
    next_secret: str = ""


@dataclass(frozen=True)
class Checks:
    """Which of the deep checks this sweep planned for the relay."""

    audit: bool = False
    data_plane: bool = False
    credentials: bool = False

    @property
    def deep(self) -> bool:
        return self.audit or self.data_plane or self.credentials


@dataclass
class Decision:
    observation: Observation
    fields: dict[str, object] = field(default_factory=dict)
    events: list[tuple[RelayEventKind, str]] = field(default_factory=list)


def decide(
    relay: RelaySnapshot,
    report: RelayReport,
    *,
    checks: Checks,
    checked_at: datetime,
    thresholds: Thresholds,
    grants_valid_until: Callable[[], datetime | None],
) -> Decision:
    """The new field values and events for `relay` after `report`. `grants_valid_until` gives
    the expiry of the longest credential issued for the relay (asked only when its staged
    secret is promoted: the old one must be kept until then)."""
    observation = observe(report, max_loss=thresholds.max_loss, max_rtt_ms=thresholds.max_rtt_ms)
    decision = Decision(observation)
    health = next_health(
        Health(relay.status, relay.worse_streak, relay.better_streak),
        observation,
        down_after=thresholds.down_after,
        up_after=thresholds.up_after,
    )
    if health.status != relay.status:
        decision.events.append((STATUS_EVENT[health.status], report.error or "all checks passed"))
    dp = report.data_plane
    fields = decision.fields
    fields.update(
        status=health.status,
        worse_streak=health.worse_streak,
        better_streak=health.better_streak,
        transport_status={k: "up" if ok else "down" for k, ok in report.transports().items()},
        last_rtt_ms=report.rtt_ms,
        last_checked_at=checked_at,
        last_error=report.error,
        updated_at=checked_at,
    )
    if dp is not None and not dp.not_measurable:
        fields.update(last_loss=dp.loss, last_jitter_ms=dp.jitter_ms)

    audit = report.audit
    if checks.audit and audit is not None and audit.ran:
        accepted = tuple(audit.accepted)
        if audit.unsafe != relay.unsafe or (audit.unsafe and accepted != relay.accepted_peers):
            if audit.unsafe:
                decision.events.append(
                    (RelayEventKind.UNSAFE, f"accepts peers {', '.join(accepted)}")
                )
            else:
                decision.events.append((RelayEventKind.SAFE, ""))
        fields.update(unsafe=audit.unsafe, accepted_peers=list(accepted), audited_at=checked_at)
    if checks.deep and not report.deep_timed_out:
        fields["deep_checked_at"] = checked_at  # (timed out: they run again next sweep)

    if report.next_secret_ok and relay.next_secret:
        until = max(grants_valid_until() or checked_at, checked_at)
        fields.update(
            previous_secret=relay.secret,
            previous_secret_until=until,
            secret=relay.next_secret,
            next_secret="",
        )
        decision.events.append(
            (
                RelayEventKind.SECRET_ROTATED,
                "issuing with the new secret; the old one is kept until "
                f"{until:%Y-%m-%d %H:%M:%S}Z",
            )
        )
    return decision
