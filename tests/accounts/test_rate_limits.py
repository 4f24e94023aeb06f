"""What a stranger can trigger is rate-limited: password guessing and sign-up floods."""

import random

import pytest

from accounts.models import User

pytestmark = [pytest.mark.django_db, pytest.mark.ratelimit, pytest.mark.smoke]


@pytest.fixture
def stranger(client):
    # A fresh address per run: the counters live in Redis and outlive the test.
    client.defaults["REMOTE_ADDR"] = (
        f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    )
    return client


def test_password_guessing_is_cut_off_per_account(stranger, alice):
    codes = [
        stranger.post(
            "/accounts/login/", {"username": "alice", "password": f"guess-{i}"}
        ).status_code
        for i in range(12)
    ]
    assert codes[:10] == [200] * 10 and codes[10:] == [429, 429]
    assert (
        "Too many attempts"
        in stranger.post(
            "/accounts/login/", {"username": "alice", "password": "x"}
        ).content.decode()
    )


def test_sign_up_floods_are_cut_off_per_address(stranger):
    codes = []
    for i in range(11):
        form = {
            "username": f"bot{i}",
            "password1": "a-long-enough-passphrase",
            "password2": "a-long-enough-passphrase",
        }
        codes.append(stranger.post("/accounts/signup/", form).status_code)
        stranger.cookies.clear()
    assert codes[:10] == [302] * 10 and codes[10] == 429
    assert User.objects.count() == 10
