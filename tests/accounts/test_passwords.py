"""People can keep their accounts: change a password signed in, reset a forgotten one by email."""

import re

import pytest
from django.core import mail

from accounts.models import User

pytestmark = [pytest.mark.django_db, pytest.mark.smoke]
NEW = "another-long-passphrase-42"


def test_change_password_signed_in(client, alice, password):
    client.login(username="alice", password=password)
    page = client.get("/accounts/password/")
    assert page.status_code == 200 and "Change your password" in page.content.decode()
    wrong = client.post(
        "/accounts/password/",
        {"old_password": "nope", "new_password1": NEW, "new_password2": NEW},
    )
    assert wrong.status_code == 200 and "incorrectly" in wrong.content.decode()
    response = client.post(
        "/accounts/password/",
        {"old_password": password, "new_password1": NEW, "new_password2": NEW},
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/password/done/"
    alice.refresh_from_db()
    assert alice.check_password(NEW)
    assert client.get("/").status_code == 200  # still signed in here


def test_reset_a_forgotten_password_by_email(client, alice, password):
    User.objects.filter(pk=alice.pk).update(email="alice@example.com")
    assert "Reset it" in client.get("/accounts/login/").content.decode()
    response = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert "on its way" in client.get(response["Location"]).content.decode()
    [message] = mail.outbox
    assert message.to == ["alice@example.com"] and "alice" in message.body
    link = re.search(r"https?://[^/]+(/accounts/password/reset/\S+/)", message.body).group(1)
    form_page = client.get(link, follow=True)
    assert "Choose a new password" in form_page.content.decode()
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": NEW, "new_password2": NEW}
    )
    assert done.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(NEW) and not alice.check_password(password)
    # The link works once.
    again = client.get(link, follow=True)
    assert "no longer works" in again.content.decode()


def test_unknown_addresses_look_the_same_and_send_nothing(client):
    response = client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and mail.outbox == []
