"""The fleet's truth for admins (issue 11): calls direct, relayed and failed per day, the direct
share per NAT type the network tests found, the relays that carried calls with their minutes,
and failed calls with what each side tried; on the fleet page and over the API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from calls.models import (
    AssignedRelay,
    Call,
    CallState,
    ConnectionType,
    EndReason,
    Participant,
    ParticipantRole,
)
from calls.selectors import path_stats
from calls.services import participant_report
from relays.models import NetworkTestResult
from tests.conftest import up_relay
from tests.integrations.test_api_keys import bearer, make_key

pytestmark = pytest.mark.django_db

NOW = timezone.now()
# "Today's" calls start halfway through NOW's day: an hour before NOW would be yesterday when
# the suite runs just after midnight (it did, in CI, at 00:10).
TODAY = (NOW - timezone.localtime(NOW).replace(hour=0, minute=0, second=0, microsecond=0)) / 2


def a_call(
    a, b, *, paths, ago=TODAY, at=None, minutes=5.0, failed=False, relay=None, types=("", "")
):
    started = at or NOW - ago
    call = Call.objects.create(
        created_by=a,
        state=CallState.ENDED,
        end_reason=EndReason.FAILED if failed else EndReason.HANGUP,
        answered_at=started,
        ended_at=started + timedelta(minutes=minutes),
    )
    Call.objects.filter(pk=call.pk).update(created_at=started)
    for user, role, path, kind in zip(
        (a, b), (ParticipantRole.CALLER, ParticipantRole.CALLEE), paths, types, strict=True
    ):
        Participant.objects.create(
            call=call,
            user=user,
            role=role,
            joined_at=started,
            connection_type=path,
            relay=relay if path == ConnectionType.RELAY else None,
            network_type=kind,
        )
    return call


@pytest.fixture
def history(alice, bob):
    relay = up_relay("carrier")
    a_call(alice, bob, paths=("srflx", "srflx"), types=("endpoint-independent", "open"))
    a_call(alice, bob, paths=("host", "prflx"), ago=timedelta(days=1), types=("open", ""))
    a_call(
        alice,
        bob,
        paths=("relay", "relay"),
        relay=relay,
        minutes=3,
        types=("address-and-port-dependent", "endpoint-independent"),
    )
    a_call(alice, bob, paths=("relay", "srflx"), relay=relay, minutes=1.5, ago=timedelta(days=2))
    lost = a_call(alice, bob, paths=("", ""), failed=True, types=("udp-blocked", ""))
    AssignedRelay.objects.create(
        participant=lost.participants.get(user=alice), relay=relay, position=0
    )
    a_call(alice, bob, paths=("srflx", "srflx"), ago=timedelta(days=30))  # out of the window
    return relay


def test_paths_per_day_per_nat_type_per_relay_and_failures(history):
    stats = path_stats(days=14, now=NOW)
    assert len(stats["days"]) == 14
    today = stats["days"][-1]
    assert (today["direct"], today["relayed"], today["failed"]) == (1, 1, 1)
    assert sum(d["direct"] for d in stats["days"]) == 2
    assert sum(d["relayed"] for d in stats["days"]) == 2
    types = {row["networkType"]: row for row in stats["networkTypes"]}
    assert types["endpoint-independent"] == {
        "networkType": "endpoint-independent",
        "direct": 1,
        "relayed": 1,
    }
    assert types["address-and-port-dependent"]["relayed"] == 1
    assert types["open"]["direct"] == 2
    assert types["untested"] == {"networkType": "untested", "direct": 1, "relayed": 2}
    assert "udp-blocked" not in types  # its only call never connected
    assert stats["relays"] == [{"relay": "carrier", "calls": 2, "minutes": 4.5}]
    (failed,) = stats["failed"]
    assert [s["path"] for s in failed["sides"]] == ["never connected", "never connected"]
    assert failed["sides"][0]["networkType"] == "udp-blocked"
    assert [s["relaysGiven"] for s in failed["sides"]] == [["carrier"], []]


def test_a_report_takes_the_nat_type_of_the_users_latest_network_test_there(alice, bob):
    call = a_call(alice, bob, paths=("", ""))
    me = call.participants.get(user=alice)
    NetworkTestResult.objects.create(
        user=alice,
        network="198.51.100.0/24",
        network_type="open",
        verdict="direct",
        udp=True,
        created_at=timezone.now() - timedelta(hours=1),
    )
    NetworkTestResult.objects.create(
        user=alice,
        network="198.51.100.0/24",
        network_type="address-and-port-dependent",
        verdict="relay",
        udp=True,
        created_at=timezone.now() - timedelta(minutes=1),
    )
    participant_report(participant=me, connection_type="srflx", network="198.51.100.0/24")
    me.refresh_from_db()
    assert me.network_type == "address-and-port-dependent"
    # Another network, or a test from too long ago: untested.
    participant_report(participant=me, connection_type="srflx", network="203.0.113.0/24")
    me.refresh_from_db()
    assert me.network_type == ""
    NetworkTestResult.objects.update(created_at=timezone.now() - timedelta(days=31))
    participant_report(participant=me, connection_type="srflx", network="198.51.100.0/24")
    me.refresh_from_db()
    assert me.network_type == ""


def test_the_api_is_for_staff_and_relay_admin_keys(client, history, alice, django_user_model):
    assert client.get("/api/v1/fleet/paths/").status_code in (401, 403)
    client.force_login(alice)
    assert client.get("/api/v1/fleet/paths/").status_code == 403
    assert client.get("/api/v1/fleet/paths/", **bearer(make_key("calls:read"))).status_code == 403
    body = client.get("/api/v1/fleet/paths/?days=3", **bearer(make_key("relays:admin"))).json()
    assert len(body["days"]) == 3 and body["relays"][0]["relay"] == "carrier"
    bad = client.get("/api/v1/fleet/paths/?days=1000", **bearer(make_key("relays:admin")))
    assert bad.status_code == 400 and "days" in bad.json()["error"]["fields"]


def test_the_fleet_page_shows_the_paths(client, history, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="x" * 12)
    client.force_login(admin)
    page = " ".join(client.get("/admin/relays/relay/fleet/").content.decode().split())
    assert (
        "2 calls went direct, 2 through a relay (50% of those that connected), and 1 failed" in page
    )
    assert 'class="paths-chart"' in page
    assert 'data-network-type="address-and-port-dependent"' in page
    assert 'data-relay="carrier"' in page and "<td>4.5</td>" in page
    assert "never connected" in page
    assert "given carrier" in page and "given no relay" in page


def test_an_invitee_who_never_joined_does_not_hide_a_calls_path(alice, bob, charlie):
    """One rule for a call's path (calls.models.call_path), on the call and in the figures:
    only those who took part count."""
    call = a_call(alice, bob, paths=("srflx", "host"))
    Participant.objects.create(call=call, user=charlie, role=ParticipantRole.INVITEE)
    call = Call.objects.prefetch_related("participants").get(pk=call.pk)
    assert call.path_summary == "direct"
    assert sum(d["direct"] for d in path_stats(days=1, now=NOW)["days"]) == 1


@pytest.mark.parametrize("hour", [0, 23])
def test_a_day_is_the_calendar_day_whatever_the_hour(alice, bob, hour):
    """Figures for a window ending at `now` count the calls of `now`'s day from its midnight,
    and none after `now`'s day, at any hour: a minute after midnight and a minute before."""
    now = timezone.localtime(NOW).replace(hour=hour, minute=1 if hour == 0 else 59)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    a_call(alice, bob, paths=("srflx", "srflx"), at=midnight)  # today
    a_call(alice, bob, paths=("relay", "relay"), at=midnight - timedelta(seconds=1))  # yesterday
    a_call(alice, bob, paths=("host", "host"), at=midnight + timedelta(days=1))  # tomorrow
    days = path_stats(days=2, now=now)["days"]
    assert [d["day"] for d in days] == [midnight.date() - timedelta(days=1), midnight.date()]
    assert [(d["direct"], d["relayed"]) for d in days] == [(0, 1), (1, 0)]
