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


def test_calling_someone_who_is_calling_you_answers_their_call(client, alice, bob, password):
    """Glare from the web form: no second call; the form takes alice into bob's call, answering."""
    theirs = call_start(caller=bob, callee=alice)
    client.login(username="alice", password=password)
    response = client.post("/", {"callee": "bob", "kind": "voice"})
    assert response.status_code == 302
    assert response["Location"] == f"/calls/{theirs.id}/?answer=1&video=0"
    assert Call.objects.count() == 1


def test_a_voice_call_is_stored_as_one(client, alice, bob, password):
    client.login(username="alice", password=password)
    client.post("/", {"callee": "bob", "kind": "voice"})
    assert Call.objects.get().kind == "voice"


def test_a_blocked_caller_is_told_unavailable(client, alice, bob, password):
    from accounts.services import block_create

    block_create(blocker=bob, blocked=alice)
    client.login(username="alice", password=password)
    response = client.post("/", {"callee": "bob"})
    assert (
        response.status_code == 400 and "That person is unavailable." in response.content.decode()
    )
    assert not Call.objects.exists()


def test_settings_turn_do_not_disturb_on_and_block_and_unblock(client, alice, bob, password):
    client.login(username="alice", password=password)
    assert (
        client.post("/accounts/settings/", {"action": "dnd", "do_not_disturb": "on"}).status_code
        == 302
    )
    alice.refresh_from_db()
    assert alice.do_not_disturb
    client.post("/accounts/block/", {"username": "BOB"})
    assert list(alice.blocks.values_list("blocked__username", flat=True)) == ["bob"]
    page = client.get("/accounts/settings/").content.decode()
    assert "@bob" in page and "checked" in page
    assert client.post("/accounts/block/", {"username": "alice"}).status_code == 400
    assert client.post("/accounts/block/", {"username": "nobody"}).status_code == 400
    response = client.post(f"/accounts/unblock/{bob.pk}/", {"next": "https://evil.example/"})
    assert response["Location"] == "/accounts/settings/"  # never an open redirect
    assert not alice.blocks.exists()
    # Only your own blocks: unblocking someone else's block does nothing.
    from accounts.services import block_create

    block_create(blocker=bob, blocked=alice)
    client.post(f"/accounts/unblock/{alice.pk}/")
    assert bob.blocks.count() == 1


def test_a_calls_details_show_its_chat_escaped(client, alice, bob, charlie, password):
    from calls.models import ChatMessage

    call = call_start(caller=alice, callee=bob)
    ChatMessage.objects.create(call=call, user=bob, text="<b>see</b> you")
    client.login(username="alice", password=password)
    page = client.get(f"/calls/{call.id}/details/").content.decode()
    assert "&lt;b&gt;see&lt;/b&gt; you" in page and "<b>see</b>" not in page
    client.login(username="charlie", password=password)
    assert client.get(f"/calls/{call.id}/details/").status_code == 404
