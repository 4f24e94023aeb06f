"""A client reports a relay failing (issue 9): the relay is probed again at once, so a broken
one is withdrawn within seconds; the probe, not the report, decides. Real coturn."""

from __future__ import annotations

import time

import pytest

from relays.models import RelayEvent, RelayEventKind, RelayStatus
from relays.services import (
    ReportLimited,
    ice_servers_issue,
    relay_failure_report,
    relay_sweep,
)
from relays.tasks import reprobe_relay

pytestmark = pytest.mark.django_db


@pytest.fixture
def given(registered, alice, settings):
    """A real relay, up, handed to alice."""
    settings.RELAY_PROBE_TIMEOUT = 1.0
    settings.RELAY_REPROBE_SECONDS = 10.0
    relay, server = registered("reported")
    relay_sweep()
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UP
    assert ice_servers_issue(user=alice)["relays"][0]["name"] == "reported"
    return relay, server


def test_a_reported_relay_that_died_is_withdrawn_within_seconds(given, alice, settings):
    relay, server = given
    server.stop()  # it dies between sweeps
    started = time.monotonic()
    assert relay_failure_report(user=alice, relay_url=relay.urls[0], problem="allocation") == relay
    assert reprobe_relay(str(relay.pk)) == RelayStatus.DOWN
    withdrawn_after = time.monotonic() - started
    print(f"measured: relay reported failing -> down in {withdrawn_after:.1f} s")
    relay.refresh_from_db()
    assert relay.status == RelayStatus.DOWN
    assert ice_servers_issue(user=alice)["status"] == "no-healthy-relay"
    (event,) = RelayEvent.objects.filter(relay=relay, kind=RelayEventKind.REPORTED)
    assert event.actor == alice and "allocation failed" in event.detail


def test_one_users_reports_never_withdraw_a_relay_the_probe_finds_up(given, alice, settings):
    relay, _ = given
    for _ in range(3):
        settings.RELAY_REPROBE_SECONDS = 0.001  # let every report through to a probe
        time.sleep(0.01)
        assert relay_failure_report(user=alice, relay_url=relay.urls[0], problem="ice") == relay
        assert reprobe_relay(str(relay.pk)) == RelayStatus.UP
    relay.refresh_from_db()
    assert relay.status == RelayStatus.UP


def test_a_crowd_of_reports_probes_a_relay_once(given, alice, bob):
    relay, _ = given
    ice_servers_issue(user=bob)
    first = relay_failure_report(user=alice, relay_url=relay.urls[0], problem="allocation")
    again = relay_failure_report(user=bob, relay_url=relay.urls[0], problem="allocation")
    assert first == relay and again is None  # one re-probe under way is enough
    assert RelayEvent.objects.filter(relay=relay, kind=RelayEventKind.REPORTED).count() == 2


def test_only_relays_handed_to_the_reporter_count(given, bob):
    relay, _ = given
    assert relay_failure_report(user=bob, relay_url=relay.urls[0], problem="allocation") is None
    assert not RelayEvent.objects.filter(relay=relay, kind=RelayEventKind.REPORTED).exists()


@pytest.mark.ratelimit
def test_reports_are_rate_limited_per_user(alice, settings):
    settings.RELAY_REPORT_RATE = "2/m"
    for _ in range(2):
        assert relay_failure_report(user=alice, relay_url="turn:x:1", problem="ice") is None
    with pytest.raises(ReportLimited) as caught:
        relay_failure_report(user=alice, relay_url="turn:x:1", problem="ice")
    assert caught.value.retry_after >= 1


@pytest.mark.smoke
def test_the_api_takes_a_report_and_refuses_a_bad_one(client, alice, password):
    client.login(username="alice", password=password)
    url = "/api/v1/relays/failures/"
    ok = client.post(
        url,
        {"relayUrl": "turn:nobody.example:3478", "problem": "allocation"},
        content_type="application/json",
    )
    assert ok.status_code == 202 and ok.json() == {"reprobing": False}  # not alice's relay
    bad = client.post(
        url, {"relayUrl": "turn:x:1", "problem": "gremlins"}, content_type="application/json"
    )
    assert bad.status_code == 400 and "problem" in bad.json()["error"]["fields"]
    client.logout()
    gone = client.post(
        url, {"relayUrl": "turn:x:1", "problem": "ice"}, content_type="application/json"
    )
    assert gone.status_code in (401, 403)
