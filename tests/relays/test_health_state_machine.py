"""The health state machine: unknown → up ⇄ degraded ⇄ down, with hysteresis."""

import pytest

from relays.health import Health, next_health, observe
from relays.probes import CredentialCheck, DataPlaneResult, RelayReport, UrlResult

pytestmark = pytest.mark.smoke


def run(observations, start="unknown", down_after=2, up_after=2):
    h = Health(start)
    seen = []
    for o in observations:
        h = next_health(h, o, down_after=down_after, up_after=up_after)
        seen.append(h.status)
    return seen


def test_the_first_probe_sets_the_status():
    assert run(["ok"]) == ["up"]
    assert run(["fail"]) == ["down"]
    assert run(["partial"]) == ["degraded"]


def test_one_bad_sweep_does_not_flap_a_relay():
    assert run(["fail", "ok", "fail", "ok"], start="up") == ["up"] * 4


def test_down_after_two_failures_in_a_row_and_up_after_two_good_ones():
    assert run(["fail", "fail", "ok", "ok"], start="up") == ["up", "down", "down", "up"]


def test_degraded_sits_between():
    assert run(
        ["partial", "partial", "fail", "fail", "partial", "partial", "ok", "ok"], start="up"
    ) == [
        "up",
        "degraded",
        "degraded",
        "down",
        "down",
        "degraded",
        "degraded",
        "up",
    ]


def test_hysteresis_is_configurable():
    assert run(["fail"] * 3, start="up", down_after=3) == ["up", "up", "down"]
    assert run(["ok"], start="down", up_after=1) == ["up"]


def _report(*, ok=(True, True), dp=None, creds=None):
    results = [
        UrlResult(
            url=f"turn:r:{i}",
            kind="turn",
            transport="udp",
            ok=o,
            ms=1 if o else None,
            error=None if o else "timeout",
        )
        for i, o in enumerate(ok)
    ]
    return RelayReport(results=results, data_plane=dp, credentials=creds)


def test_observations():
    kw = {"max_loss": 0.05, "max_rtt_ms": 250}
    assert observe(_report(), **kw) == "ok"
    assert observe(_report(ok=(True, False)), **kw) == "partial"
    assert observe(_report(ok=(False, False)), **kw) == "fail"
    assert observe(RelayReport(), **kw) == "fail"
    assert (
        observe(_report(dp=DataPlaneResult(ok=True, sent=10, received=8, loss=0.2, rtt_ms=1)), **kw)
        == "partial"
    )
    assert (
        observe(
            _report(dp=DataPlaneResult(ok=True, sent=10, received=10, loss=0, rtt_ms=400)), **kw
        )
        == "partial"
    )
    assert (
        observe(_report(dp=DataPlaneResult(ok=True, sent=10, received=10, loss=0, rtt_ms=3)), **kw)
        == "ok"
    )
    # A safe relay refuses its own loopback address as a peer: not measurable, not a failure.
    assert (
        observe(_report(dp=DataPlaneResult(ok=False, error="403", not_measurable=True)), **kw)
        == "ok"
    )
    assert (
        observe(_report(creds=CredentialCheck(clock_skew="relay clock behind")), **kw) == "partial"
    )
