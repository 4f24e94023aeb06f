"""Starting calls from the web UI, the in-call page and history: owner, member, outsider."""

from datetime import timedelta

import pytest
from django.utils import timezone

from calls.models import Call, CallState, Participant
from calls.services import call_end, call_start

pytestmark = pytest.mark.django_db


@pytest.mark.smoke
def test_start_a_call_from_home(client, alice, bob, password):
    client.login(username="alice", password=password)
    response = client.post("/", {"callee": "BOB"})
    call = Call.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/calls/{call.id}/"
    assert call.state == CallState.RINGING and call.created_by == alice
    assert {(p.user.username, p.role) for p in call.participants.all()} == {
        ("alice", "caller"),
        ("bob", "callee"),
    }


@pytest.mark.smoke
def test_bad_callees_are_explained(client, alice, password):
    client.login(username="alice", password=password)
    for callee, text in (("nobody", "no one called"), ("alice", "call yourself"), ("", "required")):
        response = client.post("/", {"callee": callee})
        assert response.status_code == 400 and text in response.content.decode()
    assert not Call.objects.exists()


def test_callee_sees_the_ringing_call_on_home(client, alice, bob, password):
    call = call_start(caller=alice, callee=bob)
    client.login(username="bob", password=password)
    html = client.get("/").content.decode()
    assert f'data-call="{call.id}"' in html and "Alice" in html


def test_call_page_is_for_participants_only(client, alice, bob, charlie, password):
    call = call_start(caller=alice, callee=bob)
    for user, status in (("alice", 200), ("bob", 200), ("charlie", 404)):
        client.login(username=user, password=password)
        assert client.get(f"/calls/{call.id}/").status_code == status
        assert client.get(f"/calls/{call.id}/details/").status_code == status
    client.logout()
    assert client.get(f"/calls/{call.id}/").status_code == 302


def test_an_ended_call_page_goes_to_its_details(client, alice, bob, password):
    call = call_start(caller=alice, callee=bob)
    call_end(call_id=call.id, user=alice)
    client.login(username="bob", password=password)
    # Just ended: its screen says how (busy, declined…), and the page moves on by itself.
    response = client.get(f"/calls/{call.id}/")
    assert response.status_code == 200 and b'data-state="ended"' in response.content
    assert b'data-end-reason="hangup"' in response.content
    Call.objects.filter(pk=call.pk).update(ended_at=timezone.now() - timedelta(minutes=2))
    response = client.get(f"/calls/{call.id}/")
    assert response.status_code == 302 and response["Location"] == f"/calls/{call.id}/details/"


def test_history_shows_participants_and_connection_types(client, alice, bob, charlie, password):
    call = call_start(caller=alice, callee=bob)
    Participant.objects.filter(call=call, user=alice).update(
        connection_type="relay", relay_url="turn:r.example"
    )
    Participant.objects.filter(call=call, user=bob).update(connection_type="host")
    call_start(caller=bob, callee=charlie)

    client.login(username="alice", password=password)
    html = client.get("/calls/").content.decode()
    assert html.count("<li data-call=") == 1  # alice sees her call only
    # One badge per call: relayed when any side went through a relay; each side in its title.
    assert ">relayed</span>" in html and "Alice: relay; Bob: host" in html
    detail = client.get(f"/calls/{call.id}/details/").content.decode()
    assert (
        'data-user="alice"' in detail and 'data-user="bob"' in detail and "turn:r.example" in detail
    )
