"""Both sides of a call: the callee is handed the relay the caller holds (or one near it), and
each participant's assigned relays are recorded, over the service, the REST API and the socket."""

from __future__ import annotations

import pytest
from django.utils import timezone

from calls.models import Participant
from calls.services import NotInCall, call_ice_issue, call_start
from relays.models import Relay
from tests.conftest import at_once, up_relay

URL = "/api/v1/ice-servers/"


def _relay(name, *, region="eu", rtt=10.0, **kw):
    return up_relay(name, region=region, rtt=rtt, **kw)


def assigned(call, user) -> list[str]:
    p = Participant.objects.get(call=call, user=user)
    return sorted(p.assigned_relays.values_list("name", flat=True))


@pytest.mark.django_db
def test_the_callee_gets_the_relay_the_caller_holds(alice, bob, django_user_model):
    # Four equal relays in one region: alone, a caller lands on any of them (two random
    # choices); with the call in mind, the callee lands on the caller's, every time.
    for i in range(4):
        _relay(f"eu-{i}", rtt=10.0)
    firsts, same = set(), 0
    for round_ in range(12):
        callee = django_user_model.objects.create_user(f"callee{round_}", password="x" * 12)
        call = call_start(caller=alice, callee=callee)
        mine = call_ice_issue(user=alice, call_id=call.id)
        theirs = call_ice_issue(user=callee, call_id=call.id)
        firsts.add(mine["relays"][0]["name"])
        same += theirs["relays"][0]["name"] == mine["relays"][0]["name"]
        assert assigned(call, alice) == sorted(r["name"] for r in mine["relays"])
        assert assigned(call, callee) == sorted(r["name"] for r in theirs["relays"])
    assert same == 12
    assert len(firsts) > 1  # the callers themselves still spread


@pytest.mark.django_db
def test_a_callee_far_from_the_callers_relay_gets_one_in_its_region(alice, bob):
    _relay("eu-1", region="eu", rtt=10.0)
    _relay("us-1", region="us", rtt=10.0)
    call = call_start(caller=alice, callee=bob)
    mine = call_ice_issue(user=alice, call_id=call.id, region="eu")
    assert mine["relays"][0]["name"] == "eu-1"
    theirs = call_ice_issue(user=bob, call_id=call.id, region="us")
    # eu-1 costs bob (10 + 80 for another region) × 0.4 (the caller holds it) = 36; us-1 10.
    assert [r["name"] for r in theirs["relays"]] == ["us-1", "eu-1"]


@pytest.mark.django_db
def test_the_relay_the_other_side_reported_using_counts_over_the_one_it_was_handed_first(
    alice, bob
):
    for i in range(4):
        _relay(f"eu-{i}", rtt=10.0)
    call = call_start(caller=alice, callee=bob)
    mine = call_ice_issue(user=alice, call_id=call.id)
    handed_first, fallback = (r["name"] for r in mine["relays"])
    # ICE went through the fallback (the first refused the path): that is the one to meet on.
    Participant.objects.filter(call=call, user=alice).update(relay=Relay.objects.get(name=fallback))
    theirs = call_ice_issue(user=bob, call_id=call.id)
    assert theirs["relays"][0]["name"] == fallback != handed_first


@pytest.mark.django_db
def test_relays_for_someone_elses_call_are_refused(alice, bob, charlie):
    _relay("eu-1")
    call = call_start(caller=alice, callee=bob)
    with pytest.raises(NotInCall):
        call_ice_issue(user=charlie, call_id=call.id)
    with pytest.raises(NotInCall):
        call_ice_issue(user=charlie, call_id="not-a-uuid")
    assert not Participant.objects.filter(call=call, assigned_relays__isnull=False).exists()


@pytest.mark.django_db
def test_the_api_takes_the_call_and_refuses_other_peoples(client, alice, bob, charlie, password):
    _relay("eu-1")
    _relay("eu-2")
    call = call_start(caller=alice, callee=bob)
    client.login(username="alice", password=password)
    mine = client.get(URL, {"call": str(call.id)}).json()
    client.logout()
    client.login(username="bob", password=password)
    theirs = client.get(URL, {"call": str(call.id)})
    assert theirs.status_code == 200
    assert theirs.json()["relays"][0]["name"] == mine["relays"][0]["name"]
    assert assigned(call, bob) == sorted(r["name"] for r in theirs.json()["relays"])
    client.logout()
    client.login(username="charlie", password=password)
    for bad in (str(call.id), "nope"):
        refused = client.get(URL, {"call": bad})
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "not_found"
    assert not Relay.objects.get(name="eu-1").grants.filter(user=charlie).exists()


@pytest.mark.django_db
def test_explain_shows_a_sample_caller_joining_a_call(admin_client, alice, bob):
    _relay("eu-1")
    _relay("eu-2")
    call = call_start(caller=alice, callee=bob)
    mine = call_ice_issue(user=alice, call_id=call.id)
    body = admin_client.get("/api/v1/relays/explain/", {"call": str(call.id)}).json()
    # The relay the caller uses (no report yet: the first it was handed).
    assert body["caller"]["call_relays"] == [mine["relays"][0]["name"]]
    assert body["chosen"][0] == mine["relays"][0]["name"]
    bad = admin_client.get("/api/v1/relays/explain/", {"call": "nope"})
    assert bad.status_code == 400
    page = admin_client.get("/admin/relays/relay/explain/", {"call": str(call.id)})
    assert page.status_code == 200 and b"participants hold" in page.content


@pytest.mark.django_db
def test_gather_reports_over_rest_feed_selection(client, alice, password):
    from relays.models import ClientRelayRtt, CredentialGrant
    from relays.selectors import explain_selection

    near = _relay("near", rtt=40.0)
    _relay("far", rtt=30.0)
    grant = CredentialGrant.objects.create(
        user=alice, expires_at=timezone.now() + timezone.timedelta(minutes=5)
    )
    grant.relays.set([near])
    client.login(username="alice", password=password)
    gather = "/api/v1/relays/gather/"
    ok = client.post(
        gather,
        {"gathered": [{"relayUrl": near.urls[0], "ms": 20}], "network": "eu"},
        content_type="application/json",
    )
    assert ok.status_code == 202 and ok.json() == {"taken": 1}
    assert ClientRelayRtt.objects.get().kind == "gather"
    # For callers declaring eu, "near" now scores 10 (half its 20 ms gather), under far's 30.
    rows = {r["name"]: r for r in explain_selection(region="eu")["relays"]}
    assert rows["near"]["parts"]["rtt (client gather)"] == 10.0
    assert explain_selection(region="eu")["chosen"][0] == "near"
    for bad in (
        {"gathered": []},
        {"gathered": [{"relayUrl": near.urls[0], "ms": 10**9}]},
        {"gathered": "soon"},
    ):
        refused = client.post(gather, bad, content_type="application/json")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid", bad


@pytest.mark.django_db
@pytest.mark.ratelimit
def test_gather_reports_are_rate_limited_per_user(client, alice, password, settings):
    settings.RELAY_GATHER_RATE = "2/m"
    client.login(username="alice", password=password)
    body = {"gathered": [{"relayUrl": "turn:x.example:3478", "ms": 5}]}
    codes = [
        client.post("/api/v1/relays/gather/", body, content_type="application/json").status_code
        for _ in range(3)
    ]
    assert codes == [202, 202, 429]


@pytest.mark.django_db(transaction=True)
def test_two_devices_asking_at_once_both_get_relays_and_one_record(alice, bob):
    """Two ringing pages of bob's fetch their relays for the call at the same moment (early
    ICE): both are answered, and the participant keeps one consistent set of assigned relays.
    (Both once deleted, then inserted, and the second failed on the unique relay per participant.)"""
    for i in range(3):
        _relay(f"eu-{i}", rtt=10.0)
    call = call_start(caller=alice, callee=bob)
    for _ in range(5):
        outcomes = at_once(*[lambda: call_ice_issue(user=bob, call_id=call.id)] * 3)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        results = [o for o in outcomes if o is not None and not isinstance(o, BaseException)]
        assert errors == [] and len(results) == 3
        kept = Participant.objects.get(call=call, user=bob).assigned_relays.count()
        assert kept == len(results[0]["relays"]) == 2
