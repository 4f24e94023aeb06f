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

TARGET = {"ok": "up", "partial": "degraded", "fail": "down"}
RANK = {"down": 0, "degraded": 1, "up": 2}


def observe(report: RelayReport, *, max_loss: float, max_rtt_ms: float) -> str:
    """What one probe says about the relay: ok, partial or fail."""
    if not report.results or not report.any_ok:
        return "fail"
    if not report.ok:
        return "partial"
    if report.deep_timed_out:
        return "partial"
    dp = report.data_plane
    if dp is not None and not dp.not_measurable:
        if not dp.ok:
            return "partial"
        if (dp.loss or 0) > max_loss or (dp.rtt_ms or 0) > max_rtt_ms:
            return "partial"
    creds = report.credentials
    if creds is not None and creds.clock_skew:
        return "partial"
    return "ok"


@dataclass(frozen=True)
class Health:
    status: str
    worse_streak: int = 0
    better_streak: int = 0


def next_health(current: Health, observation: str, *, down_after: int, up_after: int) -> Health:
    target = TARGET[observation]
    if current.status == "unknown":
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
