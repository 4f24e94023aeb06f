"""Usernames are unique after normalization, and look-alikes of existing ones are refused: an
impostor must not be able to ring people as `аlice` (Cyrillic а) or `ａｌｉｃｅ`."""

import pytest

from accounts.models import User
from accounts.usernames import username_key, username_skeleton

pytestmark = [pytest.mark.django_db, pytest.mark.smoke]

FORM = {"password1": "a-long-enough-passphrase", "password2": "a-long-enough-passphrase"}


@pytest.mark.parametrize(
    "impostor",
    ["Alice", "ALICE", " alice", "ａｌｉｃｅ", "\u0430lice", "al\u0456ce", "alıce", "a1ice"],
)
def test_look_alikes_of_an_existing_name_are_refused(client, alice, impostor):
    response = client.post("/accounts/signup/", {"username": impostor, **FORM})
    assert response.status_code == 400, impostor
    assert "looks too much like" in response.content.decode() or "already exists" in (
        response.content.decode()
    )
    assert User.objects.count() == 1


def test_different_names_are_still_welcome(client, alice):
    response = client.post("/accounts/signup/", {"username": "alicia", **FORM})
    assert response.status_code == 302
    assert User.objects.get(username="alicia").username_skeleton == "alicia"


def test_normal_forms():
    assert username_key(" Bob ") == username_key("ｂｏｂ") == "bob"
    assert username_skeleton("\u0430lice") == username_skeleton("ALICE") == "alice"
    assert username_skeleton("bob") != username_skeleton("rob")


def test_the_incoming_call_shows_the_username_next_to_the_display_name(client, alice, bob):
    from calls.services import call_start

    User.objects.filter(pk=alice.pk).update(display_name="Bob's bank")
    alice.refresh_from_db()
    call = call_start(caller=alice, callee=bob)
    client.force_login(bob)
    # The call screen (the ringer banner renders the same pair from the `incoming` frame).
    html = client.get(f"/calls/{call.id}/").content.decode()
    assert 'Bob&#x27;s bank <span class="muted handle">@alice</span>' in html
