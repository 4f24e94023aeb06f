"""A sweep stores what it found; selection hands out only relays that are up, best first."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from relays.models import ProbeResult, Relay, RelayEvent, RelayStatus
from relays.selectors import select_relays_for
from relays.services import relay_create, relay_sweep
from tests.conftest import at_once, free_port

pytestmark = pytest.mark.django_db


def test_sweep_stores_results_and_status(registered):
    good, _ = registered("good")
    bad, server = registered("bad", secret_override="wrong-but-long-enough")
    dead = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="dead",
        urls=[f"turn:127.0.0.1:{free_port()}?transport=tcp"],
        secret="x-secret-of-16-chars",
    )

    outcomes = {o.relay.name: o for o in relay_sweep()}

    assert {n: o.relay.status for n, o in outcomes.items()} == {
        "good": "up",
        "bad": "down",
        "dead": "down",
    }
    for relay in (good, bad, dead):
        relay.refresh_from_db()
        assert relay.last_checked_at is not None
        assert relay.probe_results.count() == 1
    assert good.last_rtt_ms is not None and good.last_error == ""
    assert good.transport_status == {"stun": "up", "udp": "up", "tcp": "up"}
    assert "401" in bad.last_error
    assert "refused" in dead.last_error
    stored = ProbeResult.objects.get(relay=bad)
    assert {u["url"]: u["error"] for u in stored.urls if u["kind"] == "turn"} == {
        u: "401" for u in server.urls
    }
    assert stored.observation == "fail" and stored.credentials["bad_secret"] is True


def test_a_killed_relay_goes_down_after_the_hysteresis_and_comes_back(registered, settings):
    settings.RELAY_DOWN_AFTER = settings.RELAY_UP_AFTER = 2
    relay, server = registered("flaky")

    def sweep():
        relay_sweep(force=True, timeout=0.5)
        relay.refresh_from_db()
        return relay.status

    assert sweep() == "up"
    server.stop()
    assert [sweep(), sweep()] == ["up", "down"]  # one failed sweep is not enough
    server.restart()
    assert [sweep(), sweep()] == ["down", "up"]
    kinds = list(
        RelayEvent.objects.filter(relay=relay).order_by("at", "id").values_list("kind", flat=True)
    )
    assert kinds == ["created", "allow-private", "up", "down", "up"]


def test_udp_only_relay_is_degraded_with_per_transport_status(coturn):
    server = coturn(allow_loopback_peers=False, udp_only=True)
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="udp-only",
        urls=server.urls,
        secret=server.secret,
    )
    (outcome,) = relay_sweep()
    relay.refresh_from_db()
    assert outcome.observation == "partial"
    assert relay.status == RelayStatus.DEGRADED
    assert relay.transport_status == {"stun": "up", "udp": "up", "tcp": "down"}
    assert f"{server.urls[1]}: refused" in relay.last_error


def test_disabled_relays_are_not_probed(registered):
    relay, _ = registered("off", enabled=False)
    assert relay_sweep() == []
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UNKNOWN and relay.last_checked_at is None


def test_each_relay_is_claimed_once_per_interval(registered):
    relays = [registered(f"r{i}")[0] for i in range(3)]
    assert len(relay_sweep()) == 3
    assert relay_sweep() == []  # claimed for this interval: a second sweep probes nothing
    assert ProbeResult.objects.count() == 3
    assert len(relay_sweep(force=True)) == 3  # a person asking (admin, CLI) overrides the claim
    Relay.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert len(relay_sweep()) == len(relays)


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_never_probe_a_relay_twice(registered):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serializes writers; the race needs a real server")
    for i in range(4):
        registered(f"c{i}")
    swept = at_once(relay_sweep, relay_sweep, relay_sweep)
    names = [o.relay.name for batch in swept for o in batch]
    assert sorted(names) == ["c0", "c1", "c2", "c3"]  # each exactly once
    assert ProbeResult.objects.count() == 4


def test_a_dead_relay_does_not_delay_the_others(registered):
    healthy, _ = registered("healthy")
    relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="silent",
        urls=[f"turn:127.0.0.1:{free_port()}?transport=udp"],
        secret="x-secret-of-16-chars",
    )
    outcomes = {o.relay.name: o for o in relay_sweep(timeout=1.0)}
    assert outcomes["silent"].report.results[-1].error == "timeout"
    # The probes run side by side: the healthy relay finished long before the dead one gave up.
    assert outcomes["healthy"].duration_ms < outcomes["silent"].duration_ms / 2


def _relay(name, *, status=RelayStatus.UP, rtt=1.0, enabled=True, age_s=0, **kw):
    return Relay.objects.create(
        name=name,
        urls=[f"turn:{name}.example:3478?transport=udp"],
        secret="s",
        status=status,
        last_rtt_ms=rtt,
        enabled=enabled,
        last_checked_at=timezone.now() - timedelta(seconds=age_s),
        audited_at=timezone.now(),
        **kw,
    )


@pytest.mark.smoke
def test_selection_is_healthy_first_then_lowest_rtt(alice, settings):
    settings.RELAYS_PER_CALLER = 4
    _relay("slow", rtt=40)
    _relay("fast", rtt=2)
    _relay("mid", rtt=10)
    _relay("limping", status=RelayStatus.DEGRADED, rtt=0.5)
    _relay("down", status=RelayStatus.DOWN, rtt=0.1)
    _relay("unknown", status=RelayStatus.UNKNOWN, rtt=None)
    _relay("disabled", rtt=0.1, enabled=False)
    _relay("draining", rtt=0.1, draining=True)
    _relay("unsafe", rtt=0.1, unsafe=True, accepted_peers=["127.0.0.1"])
    assert [r.name for r in select_relays_for(user=alice)] == ["fast", "mid", "slow", "limping"]


@pytest.mark.smoke
def test_unsafe_relays_are_assigned_only_with_an_explicit_override(alice):
    _relay("unsafe", unsafe=True, accepted_peers=["10.0.0.1"])
    assert select_relays_for(user=alice) == []
    Relay.objects.filter(name="unsafe").update(unsafe_override=True)
    assert [r.name for r in select_relays_for(user=alice)] == ["unsafe"]


@pytest.mark.smoke
def test_stale_relays_are_never_selected(alice, settings):
    settings.RELAY_SWEEP_INTERVAL = 15
    _relay("fresh", rtt=5, age_s=10)
    stale = _relay("stale", rtt=1, age_s=46)  # older than three intervals
    assert [r.name for r in select_relays_for(user=alice)] == ["fresh"]
    assert stale.display_status() == "stale"
