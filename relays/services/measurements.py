"""What clients measured: the round trip through a relay, per network (relays.scoring)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.ratelimits import per_user_retry_after

from ..models import ClientRelayRtt, Relay, RelayEventKind
from ..scoring import blend, decayed_weight
from ..selectors import client_rtt_half_life, relay_given_to
from .registry import relay_event

MAX_CLIENT_RTT_MS = 10_000.0  # a report beyond this is a stalled page, not a network


def relay_rtt_observe(
    *, relay: Relay, network: str, rtt_ms: float, now=None, kind: str = ClientRelayRtt.Kind.PAIR
) -> ClientRelayRtt | None:
    """One client on `network` measured `rtt_ms` through `relay` (`kind`: the selected pair's
    round trip, or the time to gather a relay candidate): fold it into that network's figure
    (older samples weigh less, halving every CLIENT_RTT_HALF_LIFE_HOURS). None when there is
    nothing to learn from (no network, or a figure out of range)."""
    if not network or not 0 <= rtt_ms <= MAX_CLIENT_RTT_MS:
        return None
    now = now or timezone.now()
    for _ in range(2):  # two first reports at once: one creates the row, the other folds in
        with transaction.atomic():
            row = (
                ClientRelayRtt.objects.select_for_update()
                .filter(network=network, relay=relay, kind=kind)
                .first()
            )
            if row is None:
                try:
                    with transaction.atomic():
                        return ClientRelayRtt.objects.create(
                            network=network,
                            relay=relay,
                            kind=kind,
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


FAILURE_PROBLEMS = ("allocation", "ice")


class ReportLimited(Exception):
    """This user reported failing relays more often than RELAY_REPORT_RATE allows."""

    code = "report_limited"

    def __init__(self, retry_after: int):
        self.retry_after = max(1, int(retry_after))
        super().__init__(f"Too many relay reports; try again in {self.retry_after} s.")


def relay_failure_report(*, user, relay_url: str, problem: str) -> Relay | None:
    """`user`'s device could not use `relay_url` (`problem`: its allocation failed, or ICE failed
    on it). Only a relay this user was handed counts. Returns the relay to probe again now, or
    None: none of theirs, or it is being probed again already (one re-probe per relay per
    RELAY_REPROBE_SECONDS, however many callers report it). The report is an event; it never
    changes the relay's health by itself: the probe does. Raises ReportLimited."""
    wait = per_user_retry_after(user=user, group="relays.report", rate=settings.RELAY_REPORT_RATE)
    if wait is not None:
        raise ReportLimited(wait)
    # Its grant may have run out during the call that failed: an hour's slack.
    relay = relay_given_to(
        user_id=user.pk, url=relay_url, expiring_after=timezone.now() - timedelta(hours=1)
    )
    if relay is None:
        return None
    fresh = cache.add(f"relays:reprobe:{relay.pk}", 1, timeout=settings.RELAY_REPROBE_SECONDS)
    detail = f"{problem} failed on {relay_url[:200]}" + ("" if fresh else " (re-probe under way)")
    relay_event(relay, RelayEventKind.REPORTED, actor=user, detail=detail).save()
    return relay if fresh else None


MAX_GATHER_REPORTS = 4  # relays in one report (a caller is handed RELAYS_PER_CALLER of them)


class MeasureLimited(ReportLimited):
    code = "measure_limited"


def relay_gather_report(*, user, network: str, gathered: list[tuple[str, float]]) -> int:
    """`user`'s device on `network` took these times (ms) to gather a relay candidate from these
    relay URLs. Each feeds that relay's figure for the network; only relays this user was
    handed count. Returns how many were taken. Raises MeasureLimited."""
    wait = per_user_retry_after(user=user, group="relays.gather", rate=settings.RELAY_GATHER_RATE)
    if wait is not None:
        raise MeasureLimited(wait)
    taken = 0
    for url, ms in gathered[:MAX_GATHER_REPORTS]:
        relay = relay_given_to(user_id=user.pk, url=url)
        if relay is None:
            continue
        if relay_rtt_observe(
            relay=relay, network=network, rtt_ms=ms, kind=ClientRelayRtt.Kind.GATHER
        ):
            taken += 1
    return taken
