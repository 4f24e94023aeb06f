"""A sweep stores what it found; selection hands out only relays that are up, best first."""

from datetime import timedelta

import pytest
from django.utils import timezone

from relays.models import ProbeResult, Relay, RelayStatus
from relays.selectors import select_relays_for
from relays.services import relay_create, relay_sweep
from tests.conftest import free_port

pytestmark = pytest.mark.django_db


def test_sweep_stores_results_and_status(registered):
    good, _ = registered("good")
    bad, server = registered("bad", secret_override="wrong")
    dead = relay_create(
        name="dead", urls=[f"turn:127.0.0.1:{free_port()}?transport=tcp"], secret="x"
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
    assert "401" in bad.last_error
    assert "refused" in dead.last_error
    stored = ProbeResult.objects.get(relay=bad)
    assert {u["url"]: u["error"] for u in stored.urls if u["kind"] == "turn"} == {
        u: "401" for u in server.urls
    }


def test_a_relay_that_dies_goes_down_and_comes_back(registered):
    relay, server = registered("flaky")
    relay_sweep()
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UP
    server.stop()
    relay_sweep(timeout=0.5)
    relay.refresh_from_db()
    assert relay.status == RelayStatus.DOWN


def test_disabled_relays_are_not_probed(registered):
    relay, _ = registered("off", enabled=False)
    assert relay_sweep() == []
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UNKNOWN and relay.last_checked_at is None


def _relay(name, *, status=RelayStatus.UP, rtt=1.0, enabled=True, age_s=0):
    return Relay.objects.create(
        name=name,
        urls=[f"turn:{name}.example:3478?transport=udp"],
        secret="s",
        status=status,
        last_rtt_ms=rtt,
        enabled=enabled,
        last_checked_at=timezone.now() - timedelta(seconds=age_s),
    )


@pytest.mark.smoke
def test_selection_is_up_first_then_lowest_rtt(alice, settings):
    settings.RELAYS_PER_CALLER = 3
    _relay("slow", rtt=40)
    _relay("fast", rtt=2)
    _relay("mid", rtt=10)
    _relay("down", status=RelayStatus.DOWN, rtt=0.1)
    _relay("unknown", status=RelayStatus.UNKNOWN, rtt=None)
    _relay("disabled", rtt=0.1, enabled=False)
    assert [r.name for r in select_relays_for(user=alice)] == ["fast", "mid", "slow"]


@pytest.mark.smoke
def test_stale_relays_are_never_selected(alice, settings):
    settings.RELAY_SWEEP_INTERVAL = 15
    _relay("fresh", rtt=5, age_s=10)
    _relay("stale", rtt=1, age_s=46)  # older than three intervals
    assert [r.name for r in select_relays_for(user=alice)] == ["fresh"]
