"""The relay health state machine, with no Django in it.

    unknown ─▶ up ⇄ degraded ⇄ down        (and up ⇄ down directly)

Each sweep gives one observation: `ok` (everything works), `partial` (some transport fails, or
the data plane loses packets or is slow) or `fail` (nothing works). The first observation sets
the status. After that, hysteresis: the status moves to a worse one only after `down_after`
worse observations in a row, and to a better one only after `up_after` better ones, so one lost
packet doesn't flap a relay. Staleness is not a state here: it is judged when read
(Relay.display_status), from the age of the last probe.
"""

from __future__ import annotations

from dataclasses import dataclass

from .probes import RelayReport
from .states import Observation, RelayStatus

TARGET = {
    Observation.OK: RelayStatus.UP,
    Observation.PARTIAL: RelayStatus.DEGRADED,
    Observation.FAIL: RelayStatus.DOWN,
}
# How good each status is: a move to a worse one needs `down_after` worse observations in a
# row, a move to a better one `up_after` better ones.
RANK = {RelayStatus.DOWN: 0, RelayStatus.DEGRADED: 1, RelayStatus.UP: 2}


def observe(report: RelayReport, *, max_loss: float, max_rtt_ms: float) -> Observation:
    """What one probe says about the relay: ok, partial or fail."""
    if not report.results or not report.any_ok:
        return Observation.FAIL
    if not report.ok:
        return Observation.PARTIAL
    if report.deep_timed_out:
        return Observation.PARTIAL
    dp = report.data_plane
    if dp is not None and not dp.not_measurable:
        if not dp.ok:
            return Observation.PARTIAL
        if (dp.loss or 0) > max_loss or (dp.rtt_ms or 0) > max_rtt_ms:
            return Observation.PARTIAL
    creds = report.credentials
    if creds is not None and creds.clock_skew:
        return Observation.PARTIAL
    return Observation.OK


@dataclass(frozen=True)
class Health:
    status: RelayStatus
    worse_streak: int = 0
    better_streak: int = 0


def next_health(
    current: Health, observation: Observation, *, down_after: int, up_after: int
) -> Health:
    target = TARGET[Observation(observation)]
    if current.status == RelayStatus.UNKNOWN:
        return Health(target)
    if RANK[target] < RANK[current.status]:
        worse = current.worse_streak + 1
        if worse >= down_after:
            return Health(target)
        return Health(current.status, worse_streak=worse)
    if RANK[target] > RANK[current.status]:
        better = current.better_streak + 1
        if better >= up_after:
            return Health(target)
        return Health(current.status, better_streak=better)
    return Health(current.status)
