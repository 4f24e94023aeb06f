"""Who gets which relay (issue 9): the caller's region (declared, from the admin's address
ranges, or the default), capacity and load, the admin's weight, a fallback elsewhere, and STUN
when no relay can be handed out. Real PostgreSQL (or SQLite in the smoke pass)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.utils import timezone

from config.client_ip import client_ip_from
from relays.ice_urls import parse_ice_url
from relays.models import CredentialGrant, RegionRange, Relay, RelayStatus
from relays.selectors import caller_region, select_relays_for
from relays.services import NO_RELAY_REASON, relay_rtt_observe, relay_sweep

pytestmark = pytest.mark.django_db
URL = "/api/v1/ice-servers/"


def _relay(name, *, region="", rtt=10.0, status=RelayStatus.UP, **kw):
    return Relay.objects.create(
        name=name,
        region=region,
        urls=[f"stun:{name}.example:3478", f"turn:{name}.example:3478?transport=udp"],
        secret="s" * 16,
        status=status,
        last_rtt_ms=rtt,
        last_checked_at=timezone.now(),
        audited_at=timezone.now(),
        **kw,
    )


def names(relays):
    return [r.name for r in relays]


@pytest.mark.smoke
def test_a_caller_gets_a_relay_in_their_region_and_a_fallback_in_another(alice):
    _relay("eu-1", region="eu", rtt=30)
    _relay("eu-2", region="eu", rtt=60)
    _relay("us-1", region="us", rtt=10)
    assert names(select_relays_for(user=alice, region="eu")) == ["eu-1", "us-1"]
    assert names(select_relays_for(user=alice, region="us")) == ["us-1", "eu-1"]
    # No region known: the nearest by RTT, then the other region.
    assert names(select_relays_for(user=alice)) == ["us-1", "eu-1"]


@pytest.mark.smoke
def test_the_fallback_is_in_another_failure_domain_when_all_share_a_region(alice):
    _relay("a1", region="eu", rtt=5, failure_domain="dc-a")
    _relay("a2", region="eu", rtt=6, failure_domain="dc-a")
    _relay("b1", region="eu", rtt=40, failure_domain="dc-b")
    assert names(select_relays_for(user=alice, region="eu"))[1] == "b1"


@pytest.mark.smoke
def test_the_region_comes_from_the_admins_address_ranges_longest_prefix_first(settings):
    settings.DEFAULT_REGION = "eu"
    RegionRange.objects.create(network="203.0.113.0/24", region="ap")
    RegionRange.objects.create(network="203.0.113.128/25", region="ap-south")
    RegionRange.objects.create(network="2001:db8::/32", region="us")
    assert caller_region(ip="203.0.113.5") == "ap"
    assert caller_region(ip="203.0.113.200") == "ap-south"
    assert caller_region(ip="2001:db8::1") == "us"
    assert caller_region(ip="198.51.100.1") == "eu"  # no range: the default
    assert caller_region(ip="not an address") == "eu"
    assert caller_region(declared="us", ip="203.0.113.5") == "us"  # the client's word first


@pytest.mark.smoke
def test_a_full_relay_gets_no_new_callers_and_expired_grants_free_it(alice, bob):
    full = _relay("full", rtt=1, capacity=1)
    _relay("roomy", rtt=50)
    grant = CredentialGrant.objects.create(
        user=bob, expires_at=timezone.now() + timedelta(minutes=5)
    )
    grant.relays.set([full])
    assert names(select_relays_for(user=alice)) == ["roomy"]
    CredentialGrant.objects.filter(pk=grant.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert names(select_relays_for(user=alice)) == ["full", "roomy"]


@pytest.mark.smoke
def test_the_admins_weight_moves_a_relay_up(alice):
    _relay("near", rtt=20)
    _relay("preferred", rtt=35, weight=2.0)  # scores 17.5
    assert names(select_relays_for(user=alice))[0] == "preferred"


@pytest.mark.smoke
def test_a_crowd_is_spread_over_equally_good_relays(django_user_model, settings):
    """Each issue adds a grant, the load figure until live allocation counts come in: 60
    callers on three equal relays land about evenly."""
    settings.RELAYS_PER_CALLER = 1
    for i in range(3):
        _relay(f"r{i}", region="eu", rtt=5, capacity=1000)
    from relays.services import ice_servers_issue

    crowd = django_user_model.objects.bulk_create(
        [django_user_model(username=f"caller{i}") for i in range(60)]
    )
    counts: dict[str, int] = {}
    for user in crowd:
        (chosen,) = ice_servers_issue(user=user, region="eu")["relays"]
        counts[chosen["name"]] = counts.get(chosen["name"], 0) + 1
    assert sorted(counts) == ["r0", "r1", "r2"]
    assert max(counts.values()) <= 24, counts


@pytest.mark.smoke
def test_the_api_takes_a_declared_region_and_the_proxys_address(client, alice, password):
    _relay("eu-1", region="eu", rtt=30)
    _relay("us-1", region="us", rtt=10)
    RegionRange.objects.create(network="198.51.100.0/24", region="eu")
    client.login(username="alice", password=password)
    assert client.get(URL, {"region": "eu"}).json()["relays"][0]["name"] == "eu-1"
    # From the proxy (loopback): X-Real-IP is the caller's address, in the eu range.
    behind_proxy = client.get(URL, HTTP_X_REAL_IP="198.51.100.7")
    assert behind_proxy.json()["relays"][0]["name"] == "eu-1"
    # From anyone else, the header is not believed: no region, so the nearest.
    spoofed = client.get(URL, HTTP_X_REAL_IP="198.51.100.7", REMOTE_ADDR="192.0.2.44")
    assert spoofed.json()["relays"][0]["name"] == "us-1"


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("peer", "real_ip", "expected"),
    [
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),  # nginx on loopback
        ("::1", "2001:db8::5", "2001:db8::5"),
        ("::ffff:127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("192.0.2.44", "198.51.100.7", "192.0.2.44"),  # not a trusted proxy: its own address
        ("127.0.0.1", "nonsense", "127.0.0.1"),
        ("127.0.0.1", None, "127.0.0.1"),
        (None, "198.51.100.7", "198.51.100.7"),  # a unix socket: only local processes
        ("", None, None),
    ],
)
def test_the_client_address_believes_x_real_ip_only_from_a_trusted_proxy(peer, real_ip, expected):
    assert client_ip_from(peer, real_ip) == expected


@pytest.mark.smoke
def test_with_no_relay_to_hand_out_callers_still_get_stun(client, alice, password, settings):
    settings.FALLBACK_STUN_URLS = ["stun:stun.example.org:3478"]
    client.login(username="alice", password=password)
    _relay("broken", status=RelayStatus.DOWN, transport_status={"stun": "down", "udp": "down"})
    body = client.get(URL).json()
    assert body["status"] == "no-healthy-relay"
    assert body["reason"] == NO_RELAY_REASON
    assert body["iceServers"] == [{"urls": ["stun:stun.example.org:3478"]}]
    assert body["relays"] == []
    # A relay whose TURN fails but whose STUN answers: its STUN comes first.
    _relay("stun-ok", status=RelayStatus.DOWN, transport_status={"stun": "up", "udp": "down"})
    assert client.get(URL).json()["iceServers"] == [{"urls": ["stun:stun-ok.example:3478"]}]
    # Relays flagged unsafe are not used even for STUN.
    Relay.objects.filter(name="stun-ok").update(unsafe=True)
    assert client.get(URL).json()["iceServers"] == [{"urls": ["stun:stun.example.org:3478"]}]


def test_a_real_relay_whose_turn_fails_still_serves_stun(client, alice, password, registered):
    """coturn with a secret Traverse doesn't know: every Allocate is refused, the relay is down,
    and its STUN still gives callers their public address."""
    relay, server = registered("wrong-secret", secret_override="not-the-servers-secret-42")
    relay_sweep()
    relay.refresh_from_db()
    assert relay.status == RelayStatus.DOWN and relay.transport_status["stun"] == "up"
    client.login(username="alice", password=password)
    body = client.get(URL).json()
    assert body["status"] == "no-healthy-relay"
    (entry,) = body["iceServers"]
    assert "username" not in entry
    stun_urls = entry["urls"]
    assert stun_urls and all(u.startswith("stun:") for u in stun_urls)
    from relays.probes import stun_binding

    target = parse_ice_url(stun_urls[0])
    rtt = asyncio.run(asyncio.wait_for(stun_binding(target.host, target.port), 2.0))
    assert rtt >= 0


@pytest.mark.smoke
def test_a_turn_url_in_the_stun_fallback_is_refused_at_start_up(settings):
    settings.FALLBACK_STUN_URLS = ["turn:relay.example:3478"]
    assert "relays.E004" in {e.id for e in run_checks()}
    settings.FALLBACK_STUN_URLS = ["stun:ok.example:3478", "bogus"]
    assert "relays.E004" in {e.id for e in run_checks()}
    settings.FALLBACK_STUN_URLS = ["stun:ok.example:3478"]
    assert "relays.E004" not in {e.id for e in run_checks()}


@pytest.mark.smoke
def test_explain_shows_every_relays_score_or_why_not_to_staff_only(
    client, alice, password, django_user_model
):
    _relay("eu-1", region="eu", rtt=30)
    _relay("us-1", region="us", rtt=10, status=RelayStatus.DEGRADED)
    _relay("gone", region="eu", status=RelayStatus.DOWN)
    _relay("tired", region="eu", draining=True)
    RegionRange.objects.create(network="198.51.100.0/24", region="eu")
    explain = "/api/v1/relays/explain/"
    assert client.get(explain).status_code in (401, 403)
    client.login(username="alice", password=password)
    assert client.get(explain).status_code == 403  # not staff
    django_user_model.objects.create_user("ops", password=password, is_staff=True)
    client.login(username="ops", password=password)
    body = client.get(explain, {"ip": "198.51.100.9"}).json()
    assert body["caller"] == {
        "ip": "198.51.100.9",
        "region": "eu",
        "region_from": "the admin's address ranges",
        "network": "198.51.100.0/24",
        "call_relays": [],
    }
    rows = {r["name"]: r for r in body["relays"]}
    assert rows["eu-1"]["parts"] == {"rtt (prober)": 30.0} and rows["eu-1"]["chosen"] == 1
    assert rows["us-1"]["parts"] == {"rtt (prober)": 10.0, "degraded": 100.0, "other region": 80.0}
    assert rows["us-1"]["chosen"] == 2
    assert rows["gone"]["not_eligible_because"] == ["down"] and rows["gone"]["score"] is None
    assert rows["tired"]["not_eligible_because"] == ["draining"]
    assert body["chosen"] == ["eu-1", "us-1"]
    assert client.get(explain, {"ip": "nope"}).status_code == 400
    page = client.get("/admin/relays/relay/explain/", {"ip": "198.51.100.9"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "the admin&#x27;s address ranges" in text and 'data-relay="gone"' in text


@pytest.mark.parametrize(
    "query, default, region, region_from, shown",
    [
        (
            {"region": "us"},
            "",
            "us",
            "the client's declaration",
            "from the client&#x27;s declaration",
        ),
        ({"ip": "203.0.113.7"}, "eu", "eu", "DEFAULT_REGION", "from DEFAULT_REGION"),
        (
            {"ip": "203.0.113.7"},
            "",
            "",
            "none: no declaration, no address range matched, DEFAULT_REGION unset",
            "DEFAULT_REGION is unset): relays are scored without it",
        ),
    ],
)
def test_explain_says_where_the_callers_region_came_from(
    admin_client, settings, query, default, region, region_from, shown
):
    settings.DEFAULT_REGION = default
    _relay("eu-1", region="eu", rtt=30)
    body = admin_client.get("/api/v1/relays/explain/", query).json()
    assert (body["caller"]["region"], body["caller"]["region_from"]) == (region, region_from)
    page = admin_client.get("/admin/relays/relay/explain/", query).content.decode()
    assert shown in page and "(from unknown)" not in page


@pytest.mark.smoke
def test_what_clients_measured_from_a_network_beats_the_probers_figure_there(alice, settings):
    settings.CLIENT_RTT_HALF_LIFE_HOURS = 1
    near_prober = _relay("near-prober", rtt=5)  # near the prober
    near_callers = _relay("near-callers", rtt=50)  # but near these callers
    for _ in range(3):
        relay_rtt_observe(relay=near_prober, network="198.51.100.0/24", rtt_ms=300)
        relay_rtt_observe(relay=near_callers, network="198.51.100.0/24", rtt_ms=20)
    assert names(select_relays_for(user=alice, ip="198.51.100.9"))[0] == "near-callers"
    assert names(select_relays_for(user=alice, ip="192.0.2.9"))[0] == "near-prober"
    # Measurements fade: 3 samples, 3 half-lives later, weigh 0.375 (< 0.5): the prober's again.
    later = timezone.now() + timedelta(hours=3)
    from relays.selectors import client_rtts_for

    assert client_rtts_for(network="198.51.100.0/24", now=later) == {}
    assert set(client_rtts_for(network="198.51.100.0/24")) == {
        str(near_prober.pk),
        str(near_callers.pk),
    }


@pytest.mark.smoke
def test_a_measurement_folds_into_a_decaying_mean(settings):
    settings.CLIENT_RTT_HALF_LIFE_HOURS = 1
    relay = _relay("r", rtt=5)
    t0 = timezone.now()
    first = relay_rtt_observe(relay=relay, network="region:eu", rtt_ms=100, now=t0)
    assert (first.rtt_ms, first.weight, first.samples) == (100, 1, 1)
    # One half-life later the old sample weighs 0.5: (100 * 0.5 + 40) / 1.5 = 60.
    row = relay_rtt_observe(
        relay=relay, network="region:eu", rtt_ms=40, now=t0 + timedelta(hours=1)
    )
    assert round(row.rtt_ms, 6) == 60 and round(row.weight, 6) == 1.5 and row.samples == 2
    assert relay_rtt_observe(relay=relay, network="", rtt_ms=40) is None  # nobody's network
    assert relay_rtt_observe(relay=relay, network="region:eu", rtt_ms=-1) is None
    assert relay_rtt_observe(relay=relay, network="region:eu", rtt_ms=60_000) is None


@pytest.mark.smoke
def test_old_measurements_are_pruned(settings):
    from relays.models import ClientRelayRtt
    from relays.services import relay_prune_history

    settings.CLIENT_RTT_RETENTION_DAYS = 30
    relay = _relay("r", rtt=5)
    relay_rtt_observe(
        relay=relay, network="region:eu", rtt_ms=10, now=timezone.now() - timedelta(days=31)
    )
    relay_rtt_observe(relay=relay, network="region:us", rtt_ms=10)
    assert relay_prune_history()["client_rtts_deleted"] == 1
    assert list(ClientRelayRtt.objects.values_list("network", flat=True)) == ["region:us"]


@pytest.mark.smoke
def test_a_refresh_keeps_the_devices_relays_and_grant_while_they_are_healthy(
    client, alice, bob, password, settings
):
    settings.RELAYS_PER_CALLER = 1
    for i in range(3):
        _relay(f"r{i}", region="eu", rtt=5)
    client.login(username="alice", password=password)
    first = client.get(URL).json()
    (relay,) = [r["name"] for r in first["relays"]]
    for _ in range(5):  # other callers' grants make the other relays look lighter now
        again = client.get(URL, {"keep": first["grant"]}).json()
        assert again["grant"] == first["grant"]
        assert [r["name"] for r in again["relays"]] == [relay]
        assert f":{first['grant']}." in again["iceServers"][0]["username"]
    assert CredentialGrant.objects.filter(user=alice).count() == 1
    grant = CredentialGrant.objects.get(pk=first["grant"])
    assert grant.expires_at.isoformat() == again["expiresAt"]  # extended, not added to
    # Its relay goes down: the refresh moves to another, on the same grant.
    Relay.objects.filter(name=relay).update(status=RelayStatus.DOWN)
    moved = client.get(URL, {"keep": first["grant"]}).json()
    assert moved["grant"] == first["grant"] and moved["relays"][0]["name"] != relay
    assert list(grant.relays.values_list("name", flat=True)) == [moved["relays"][0]["name"]]
    # Somebody else's grant is not anyone's to keep.
    client.logout()
    client.login(username="bob", password=password)
    bobs = client.get(URL, {"keep": first["grant"]}).json()
    assert bobs["grant"] != first["grant"]
    assert CredentialGrant.objects.get(pk=first["grant"]).user_id == alice.pk


@pytest.mark.smoke
def test_a_refresh_extends_a_grant_that_ran_out_within_a_ttl_and_not_one_older(
    client, alice, password, settings
):
    """A page that slept past its credentials' expiry (a laptop lid) keeps its grant for one
    more TTL; an older grant is not brought back: the refresh gets a new one."""
    settings.TURN_CREDENTIAL_TTL = 600
    _relay("r", rtt=5)
    client.login(username="alice", password=password)
    late = client.get(URL).json()["grant"]
    CredentialGrant.objects.filter(pk=late).update(
        expires_at=timezone.now() - timedelta(seconds=500)
    )
    again = client.get(URL, {"keep": late}).json()
    assert again["grant"] == late
    extended = CredentialGrant.objects.get(pk=late).expires_at
    assert extended.isoformat() == again["expiresAt"] and extended > timezone.now()
    CredentialGrant.objects.filter(pk=late).update(
        expires_at=timezone.now() - timedelta(seconds=700)
    )
    fresh = client.get(URL, {"keep": late}).json()
    assert fresh["grant"] != late
    assert CredentialGrant.objects.get(pk=late).expires_at < timezone.now()


@pytest.mark.ratelimit
def test_issuing_is_rate_limited_per_user_with_a_retry_after(
    client, alice, bob, password, settings
):
    settings.ICE_ISSUE_RATE = "3/m"
    _relay("r", rtt=5)
    client.login(username="alice", password=password)
    assert [client.get(URL).status_code for _ in range(3)] == [200, 200, 200]
    limited = client.get(URL)
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "ice_limited"
    client.logout()
    client.login(username="bob", password=password)
    assert client.get(URL).status_code == 200  # per user: bob is not alice


@pytest.mark.smoke
def test_past_the_grant_cap_a_new_page_reuses_the_newest_grant(client, alice, password, settings):
    settings.ICE_GRANTS_PER_USER = 3
    _relay("r", rtt=5)
    client.login(username="alice", password=password)
    grants = [client.get(URL).json()["grant"] for _ in range(6)]  # six reloads, no keep
    assert len(set(grants[:3])) == 3
    assert grants[3] == grants[4] == grants[5] == grants[2]  # never refused, never a fourth
    assert CredentialGrant.objects.filter(user=alice).count() == 3


@pytest.mark.parametrize("writer", ["_add_grant_in_one_statement", "_add_grant_orm"])
def test_both_grant_writers_add_a_grant_with_its_relays_and_stop_at_the_cap(
    alice, bob, settings, writer
):
    """A new page's grant: one statement on PostgreSQL, the ORM elsewhere (the embedded SQLite).
    Both add the grant with exactly its relays, count only the user's own unexpired grants
    against ICE_GRANTS_PER_USER, and add nothing at the cap."""
    from relays.services import issuing

    add = getattr(issuing, writer)
    settings.ICE_GRANTS_PER_USER = 2
    relays = [_relay("a", rtt=5), _relay("b", rtt=6)]
    now = timezone.now()
    later = now + timedelta(minutes=10)
    CredentialGrant.objects.create(user=alice, expires_at=now - timedelta(seconds=1))  # expired
    CredentialGrant.objects.create(user=bob, expires_at=later)  # someone else's
    first = add(user=alice, relays=relays, now=now, expires_at=later)
    stored = CredentialGrant.objects.get(pk=first)
    assert stored.user == alice and stored.expires_at == later
    assert sorted(stored.relays.values_list("name", flat=True)) == ["a", "b"]
    assert add(user=alice, relays=relays[:1], now=now, expires_at=later) is not None
    assert add(user=alice, relays=relays, now=now, expires_at=later) is None  # at the cap
    assert CredentialGrant.objects.filter(user=alice, expires_at__gt=now).count() == 2
    assert CredentialGrant.relays.through.objects.filter(credentialgrant__user=alice).count() == 3
