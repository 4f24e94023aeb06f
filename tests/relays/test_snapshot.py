"""The fleet snapshot each process keeps for selection (relays/snapshot.py)."""

from __future__ import annotations

import time

import pytest

from relays.models import Relay, RelayStatus
from relays.selectors import select_relays_for
from relays.services import relay_drain
from tests.conftest import up_relay

pytestmark = [pytest.mark.django_db, pytest.mark.snapshot]


def _relay(name, rtt=5.0, **fields):
    return up_relay(name, rtt=rtt, **fields)


def names(relays):
    return [r.name for r in relays]


def test_a_change_behind_the_snapshots_back_shows_once_it_is_old(alice, settings):
    settings.RELAY_SNAPSHOT_SECONDS = 0.5
    settings.RELAYS_PER_CALLER = 1
    _relay("only")
    assert names(select_relays_for(user=alice)) == ["only"]
    Relay.objects.filter(name="only").update(status=RelayStatus.DOWN)  # no signal: a raw write
    assert names(select_relays_for(user=alice)) == ["only"]  # the snapshot still holds it
    time.sleep(1.1)  # twice its age: this request builds it (a quiet process)
    assert select_relays_for(user=alice) == []


def _age(fleet, seconds: float) -> None:
    fleet.built = time.monotonic() - seconds


@pytest.mark.django_db(transaction=True)  # the build's thread reads what this test committed
def test_a_request_that_finds_the_snapshot_old_is_served_it_while_a_thread_builds_the_next(
    alice, settings, monkeypatch
):
    """Between RELAY_SNAPSHOT_SECONDS and twice that, no request waits for a build: the old
    snapshot is served, and the next is built in a thread of its own. Past twice that (a quiet
    process), the request builds it itself."""
    import threading

    from relays import snapshot

    settings.RELAY_SNAPSHOT_SECONDS = 10
    settings.RELAYS_PER_CALLER = 1
    _relay("only")
    builders: list[str] = []
    build = snapshot.build

    def recorded():
        builders.append(threading.current_thread().name)
        return build()

    monkeypatch.setattr(snapshot, "build", recorded)
    first = snapshot.fleet()
    assert builders == ["MainThread"] and names(select_relays_for(user=alice)) == ["only"]
    Relay.objects.filter(name="only").update(status=RelayStatus.DOWN)  # no signal: a raw write

    _age(first, 12)
    assert snapshot.fleet() is first  # served as it is
    assert names(select_relays_for(user=alice)) == ["only"]
    snapshot.wait_for_build()
    assert builders == ["MainThread", "relay-snapshot"]  # one build, for both requests
    assert snapshot.fleet() is not first and select_relays_for(user=alice) == []

    Relay.objects.filter(name="only").update(status=RelayStatus.UP)
    _age(snapshot.fleet(), 25)
    assert names(select_relays_for(user=alice)) == ["only"]  # built here, before it answered
    assert builders == ["MainThread", "relay-snapshot", "MainThread"]


@pytest.mark.django_db(transaction=True)
def test_a_build_that_began_before_a_change_here_is_not_kept(alice, settings, monkeypatch):
    """A change in this process drops the snapshot: a build in a thread that read the fleet
    before it is not installed over the drop."""
    import threading

    from relays import snapshot

    settings.RELAY_SNAPSHOT_SECONDS = 10
    settings.RELAYS_PER_CALLER = 1
    _relay("only")
    read, release = threading.Event(), threading.Event()
    build = snapshot.build

    def held():
        built = build()
        if threading.current_thread().name == "relay-snapshot":
            read.set()
            release.wait(10)
        return built

    monkeypatch.setattr(snapshot, "build", held)
    _age(snapshot.fleet(), 12)
    snapshot.fleet()  # starts the thread's build
    assert read.wait(10)
    Relay.objects.filter(name="only").update(status=RelayStatus.DOWN)
    snapshot.drop_snapshot()  # as fleet_changed does once the change commits
    release.set()
    snapshot.wait_for_build()
    assert snapshot._current is None
    assert select_relays_for(user=alice) == []


@pytest.mark.django_db(transaction=True)
def test_a_build_that_fails_in_its_thread_keeps_the_old_snapshot_and_the_request_answers(
    alice, settings, monkeypatch, caplog
):
    from relays import snapshot

    settings.RELAY_SNAPSHOT_SECONDS = 10
    settings.RELAYS_PER_CALLER = 1
    _relay("only")
    first = snapshot.fleet()

    def broken():
        raise RuntimeError("the database went away")

    monkeypatch.setattr(snapshot, "build", broken)
    _age(first, 12)
    assert names(select_relays_for(user=alice)) == ["only"]
    snapshot.wait_for_build()
    assert snapshot.fleet() is first  # kept, and a build is tried again
    snapshot.wait_for_build()
    assert "the relay snapshot could not be built" in caplog.text
    _age(first, 25)
    with pytest.raises(RuntimeError):  # past twice its age the request builds, and meets it
        snapshot.fleet()


def test_a_change_made_here_shows_at_once(
    alice, django_user_model, settings, django_capture_on_commit_callbacks
):
    settings.RELAY_SNAPSHOT_SECONDS = 60
    relay = _relay("only")
    assert names(select_relays_for(user=alice)) == ["only"]
    admin = django_user_model.objects.create_user("ops", is_staff=True)
    with django_capture_on_commit_callbacks(execute=True):
        relay_drain(relay=relay, actor=admin)
    assert select_relays_for(user=alice) == []


def test_a_crowd_within_one_snapshot_still_spreads(alice, settings):
    settings.RELAY_SNAPSHOT_SECONDS = 60
    settings.RELAYS_PER_CALLER = 1
    for i in range(3):
        _relay(f"r{i}")
    counts: dict[str, int] = {}
    for _ in range(60):  # no grant is stored: only this process's own count moves
        (relay,) = select_relays_for(user=alice)
        counts[relay.name] = counts.get(relay.name, 0) + 1
    assert sorted(counts) == ["r0", "r1", "r2"] and max(counts.values()) <= 24, counts


@pytest.mark.django_db(transaction=True)
def test_a_relay_deleted_by_another_process_is_not_handed_out_from_a_stale_snapshot(
    alice, settings
):
    """Another process deletes a relay (here: raw SQL, no signal reaches this process) while
    this one's snapshot still holds it: the grant's link fails at commit, and the issue is made
    again from a fresh read."""
    from django.db import connection

    from relays.services import ice_servers_issue

    settings.RELAY_SNAPSHOT_SECONDS = 60
    settings.RELAYS_PER_CALLER = 1
    gone = _relay("gone", rtt=1)
    _relay("stays", rtt=50)
    assert names(select_relays_for(user=alice)) == ["gone"]  # the snapshot now holds both
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM relays_relay WHERE id = %s",
            [Relay._meta.pk.get_db_prep_value(gone.pk, connection)],  # SQLite keeps it as hex
        )
    body = ice_servers_issue(user=alice)
    assert [r["name"] for r in body["relays"]] == ["stays"]


def test_a_kept_ranking_never_hands_out_a_relay_this_process_filled(alice, settings):
    """Rankings are kept per snapshot (relays.selectors._ranking): a relay that this process's
    own issues fill meanwhile is left out of the kept ranking at once."""
    settings.RELAY_SNAPSHOT_SECONDS = 60
    settings.RELAYS_PER_CALLER = 1
    _relay("small", rtt=1, capacity=2)
    _relay("big", rtt=100)
    got = [names(select_relays_for(user=alice))[0] for _ in range(4)]
    assert got == ["small", "small", "big", "big"]


def test_a_kept_ranking_is_made_afresh_once_one_of_its_relays_goes_stale(alice, settings):
    from datetime import timedelta

    from django.utils import timezone

    from relays.states import stale_after

    settings.RELAY_SNAPSHOT_SECONDS = 60
    settings.RELAYS_PER_CALLER = 1
    fresh_for = timedelta(seconds=0.5)
    probed = timezone.now() - stale_after(settings.RELAY_SWEEP_INTERVAL) + fresh_for
    Relay.objects.filter(pk=_relay("ageing", rtt=1).pk).update(last_checked_at=probed)
    _relay("fresh", rtt=100)
    assert names(select_relays_for(user=alice)) == ["ageing"]
    assert names(select_relays_for(user=alice)) == ["ageing"]  # from the kept ranking
    time.sleep(0.6)
    assert names(select_relays_for(user=alice)) == ["fresh"]


def test_a_relay_that_goes_stale_within_a_snapshot_is_left_out_of_a_fresh_ranking(alice, settings):
    """Freshness is judged against the clock, not the snapshot's age: the relays stale now are
    found among the snapshot's by their last probe, and left out of a fresh ranking. A relay
    never probed is never handed out."""
    from datetime import timedelta

    from django.utils import timezone

    from relays.snapshot import drop_snapshot, fleet
    from relays.states import stale_after

    settings.RELAY_SNAPSHOT_SECONDS = 60
    settings.RELAYS_PER_CALLER = 1
    window = stale_after(settings.RELAY_SWEEP_INTERVAL)
    ageing = _relay("ageing", rtt=2)
    _relay("fresh", rtt=100)
    for with_a_never_probed_one in (False, True):
        drop_snapshot()
        probed = timezone.now() - window + timedelta(seconds=0.5)
        Relay.objects.filter(pk=ageing.pk).update(last_checked_at=probed)
        assert names(select_relays_for(user=alice)) == ["ageing"]
        never_probed, _ = fleet().stale(timezone.now(), window)
        assert [Relay.objects.get(pk=i).name for i in never_probed] == (
            ["never-probed"] if with_a_never_probed_one else []
        )
        time.sleep(0.6)
        fleet().rankings.clear()  # the next caller ranks afresh, from the same snapshot
        assert names(select_relays_for(user=alice)) == ["fresh"]
        if not with_a_never_probed_one:
            Relay.objects.filter(pk=_relay("never-probed", rtt=1).pk).update(last_checked_at=None)


def test_callers_whose_network_measured_relays_get_a_ranking_of_their_own(alice, settings):
    """Within one snapshot, a caller on a network whose clients measured the relays is ranked
    with those figures, and a caller on another network (none measured) by the prober's, in
    either order."""
    from django.utils import timezone

    from relays.models import ClientRelayRtt, RegionRange

    settings.RELAY_SNAPSHOT_SECONDS = 60
    settings.RELAYS_PER_CALLER = 1
    RegionRange.objects.create(network="198.51.100.0/22", region="eu")
    near = _relay("near-by-probe", region="eu", rtt=5)
    far = _relay("near-by-clients", region="eu", rtt=60)
    for relay, ms in ((near, 200.0), (far, 4.0)):
        ClientRelayRtt.objects.create(
            network="198.51.100.0/24", relay=relay, rtt_ms=ms, weight=5, updated_at=timezone.now()
        )
    for _ in range(2):
        assert names(select_relays_for(user=alice, ip="198.51.101.9")) == ["near-by-probe"]
        assert names(select_relays_for(user=alice, ip="198.51.100.9")) == ["near-by-clients"]
