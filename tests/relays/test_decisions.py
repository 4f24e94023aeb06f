"""What one sweep means for one relay (relays.decisions): every transition, with no coturn and
no database. The reports are the probes' own dataclasses, filled in as a probe would."""

from datetime import UTC, datetime, timedelta

import pytest

from relays.decisions import Checks, RelaySnapshot, Thresholds, decide
from relays.probes import AuditResult, DataPlaneResult, RelayReport, UrlResult
from relays.states import STATUS_EVENT, Observation, RelayEventKind, RelayStatus, stale_after

pytestmark = pytest.mark.smoke

AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LIMITS = Thresholds(max_loss=0.05, max_rtt_ms=250, down_after=2, up_after=2)
DEEP = Checks(audit=True, data_plane=True, credentials=True)


def report(*, ok=True, audit=None, dp=None, next_secret_ok=None, deep_timed_out=False):
    return RelayReport(
        results=[
            UrlResult(url="stun:r:3478", kind="stun", transport="udp", ok=ok, ms=4 if ok else None),
            UrlResult(
                url="turn:r:3478?transport=udp",
                kind="turn",
                transport="udp",
                ok=ok,
                ms=9 if ok else None,
                error=None if ok else "timeout",
            ),
        ],
        audit=audit,
        data_plane=dp,
        next_secret_ok=next_secret_ok,
        deep_timed_out=deep_timed_out,
    )


def relay(**fields):
    return RelaySnapshot(**{"name": "r1", "status": RelayStatus.UP, **fields})


NO_DEEP_CHECKS = Checks()


def run(snapshot, rep, checks=NO_DEEP_CHECKS, until=None):
    asked = []

    def grants_until():
        asked.append(True)
        return until

    decision = decide(
        snapshot,
        rep,
        checks=checks,
        checked_at=AT,
        thresholds=LIMITS,
        grants_valid_until=grants_until,
    )
    return decision, asked


def test_a_healthy_sweep_changes_nothing_but_the_readings():
    d, asked = run(relay(), report())
    assert d.observation is Observation.OK
    assert d.events == []
    assert d.fields["status"] == RelayStatus.UP
    assert d.fields["last_rtt_ms"] == 4
    assert d.fields["transport_status"] == {"stun": "up", "udp": "up"}
    assert d.fields["last_checked_at"] == AT
    assert "unsafe" not in d.fields and "deep_checked_at" not in d.fields
    assert asked == []  # nothing rotated: the grants were not read


def test_the_first_probe_records_the_status_as_its_event():
    d, _ = run(relay(status=RelayStatus.UNKNOWN), report(ok=False))
    assert d.fields["status"] == RelayStatus.DOWN
    assert d.events == [(RelayEventKind.DOWN, d.events[0][1])]
    assert "timeout" in d.events[0][1]


@pytest.mark.parametrize("status", [RelayStatus.UP, RelayStatus.DEGRADED, RelayStatus.DOWN])
def test_every_status_moved_into_records_its_own_event_kind(status):
    before = RelayStatus.DOWN if status == RelayStatus.UP else RelayStatus.UP
    rep = {
        RelayStatus.UP: report(),
        RelayStatus.DEGRADED: report(dp=DataPlaneResult(ok=True, loss=0.5, rtt_ms=1)),
        RelayStatus.DOWN: report(ok=False),
    }[status]
    snapshot = relay(status=before, worse_streak=1, better_streak=1)
    d, _ = run(snapshot, rep, checks=DEEP)
    assert d.fields["status"] == status
    assert [kind for kind, _ in d.events] == [STATUS_EVENT[status]]
    assert isinstance(d.events[0][0], RelayEventKind)


def test_hysteresis_keeps_the_streak_and_records_nothing():
    d, _ = run(relay(), report(ok=False))
    assert d.fields["status"] == RelayStatus.UP
    assert d.fields["worse_streak"] == 1
    assert d.events == []


def test_the_audit_flips_a_relay_unsafe_and_back_to_safe():
    unsafe = AuditResult(accepted=["10.0.0.1:9"], refused=["127.0.0.1:9"])
    d, _ = run(relay(), report(audit=unsafe), checks=DEEP)
    assert d.fields["unsafe"] is True
    assert d.fields["accepted_peers"] == ["10.0.0.1:9"]
    assert d.fields["audited_at"] == AT
    assert (RelayEventKind.UNSAFE, "accepts peers 10.0.0.1:9") in d.events

    safe = AuditResult(refused=["10.0.0.1:9", "127.0.0.1:9"])
    was_unsafe = relay(unsafe=True, accepted_peers=("10.0.0.1:9",))
    d, _ = run(was_unsafe, report(audit=safe), checks=DEEP)
    assert d.fields["unsafe"] is False and d.fields["accepted_peers"] == []
    assert (RelayEventKind.SAFE, "") in d.events


def test_an_unsafe_relay_that_accepts_other_peers_is_recorded_again():
    now_more = AuditResult(accepted=["10.0.0.1:9", "192.168.1.1:9"])
    d, _ = run(relay(unsafe=True, accepted_peers=("10.0.0.1:9",)), report(audit=now_more), DEEP)
    assert [k for k, _ in d.events] == [RelayEventKind.UNSAFE]
    same = AuditResult(accepted=["10.0.0.1:9"])
    d, _ = run(relay(unsafe=True, accepted_peers=("10.0.0.1:9",)), report(audit=same), DEEP)
    assert d.events == []  # still unsafe in the same way: said once


def test_an_audit_that_could_not_run_or_was_not_planned_changes_no_verdict():
    failed = AuditResult(error="no allocation")
    d, _ = run(relay(unsafe=True, accepted_peers=("10.0.0.1:9",)), report(audit=failed), DEEP)
    assert "unsafe" not in d.fields and "audited_at" not in d.fields
    unsafe = AuditResult(accepted=["10.0.0.1:9"])
    d, _ = run(relay(), report(audit=unsafe), checks=Checks())
    assert "unsafe" not in d.fields


def test_deep_checks_are_marked_done_only_when_they_finished():
    d, _ = run(relay(), report(), checks=DEEP)
    assert d.fields["deep_checked_at"] == AT
    d, _ = run(relay(), report(deep_timed_out=True), checks=DEEP)
    assert "deep_checked_at" not in d.fields  # they run again at the next sweep
    assert d.observation is Observation.PARTIAL
    d, _ = run(relay(), report(), checks=Checks())
    assert "deep_checked_at" not in d.fields


def test_data_plane_readings_are_kept_only_when_measurable():
    d, _ = run(relay(), report(dp=DataPlaneResult(ok=True, loss=0.01, jitter_ms=2, rtt_ms=5)))
    assert (d.fields["last_loss"], d.fields["last_jitter_ms"]) == (0.01, 2)
    d, _ = run(relay(), report(dp=DataPlaneResult(ok=False, not_measurable=True)))
    assert "last_loss" not in d.fields


def test_a_staged_secret_is_promoted_once_a_probe_with_it_succeeds():
    later = AT + timedelta(minutes=50)
    staged = relay(secret="old-secret-0123456789", next_secret="new-secret-0123456789")
    d, asked = run(staged, report(next_secret_ok=True), until=later)
    assert asked == [True]
    assert d.fields["secret"] == "new-secret-0123456789"
    assert d.fields["next_secret"] == ""
    assert d.fields["previous_secret"] == "old-secret-0123456789"
    assert d.fields["previous_secret_until"] == later
    assert [k for k, _ in d.events] == [RelayEventKind.SECRET_ROTATED]
    assert "2026-11-26 12:50:00Z" in d.events[0][1]


def test_with_no_grant_issued_the_old_secret_goes_at_once():
    staged = relay(secret="old-secret-0123456789", next_secret="new-secret-0123456789")
    d, _ = run(staged, report(next_secret_ok=True), until=None)
    assert d.fields["previous_secret_until"] == AT
    earlier = AT - timedelta(hours=1)  # long expired: never before now
    d, _ = run(staged, report(next_secret_ok=True), until=earlier)
    assert d.fields["previous_secret_until"] == AT


def test_a_staged_secret_that_failed_stays_staged():
    staged = relay(secret="old-secret-0123456789", next_secret="new-secret-0123456789")
    for ok in (False, None):
        d, asked = run(staged, report(next_secret_ok=ok))
        assert "secret" not in d.fields and asked == []
    d, asked = run(relay(), report(next_secret_ok=True))  # nothing staged
    assert "secret" not in d.fields and asked == []


def test_events_come_in_order_health_audit_rotation():
    snapshot = relay(
        status=RelayStatus.UNKNOWN,
        secret="old-secret-0123456789",
        next_secret="new-secret-0123456789",
    )
    rep = report(audit=AuditResult(accepted=["10.0.0.1:9"]), next_secret_ok=True)
    d, _ = run(snapshot, rep, checks=DEEP)
    assert [k for k, _ in d.events] == [
        RelayEventKind.UP,
        RelayEventKind.UNSAFE,
        RelayEventKind.SECRET_ROTATED,
    ]


def test_staleness_is_three_sweep_intervals():
    assert stale_after(15) == timedelta(seconds=45)


def test_the_models_choices_are_the_enums():
    from relays.models import ProbeResult, Relay, RelayEvent

    def values(model, name):
        return {value for value, _ in model._meta.get_field(name).choices}

    assert values(Relay, "status") == {s.value for s in RelayStatus}
    assert values(RelayEvent, "kind") == {k.value for k in RelayEventKind}
    assert values(ProbeResult, "observation") == {o.value for o in Observation}
