"""What a stranger can trigger is rate-limited: password guessing and sign-up floods."""

import random
import time

import pytest
from django_ratelimit.core import _get_window

from accounts.models import User

pytestmark = [pytest.mark.django_db, pytest.mark.ratelimit, pytest.mark.smoke]


def fresh(make, period: int) -> str:
    """A key value (address, account name) never used before, whose fixed rate-limit window has
    most of its time left, so the window can't roll over mid-test and reset the count. The
    counters live in Redis and outlive the test, hence new values every run."""
    while True:
        value = make()
        if _get_window(value, period) - time.time() > period / 2:
            return value


@pytest.fixture
def stranger(client):
    client.defaults["REMOTE_ADDR"] = fresh(
        lambda: f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}",
        3600,
    )
    return client


def fresh_account() -> str:
    # The per-account counter keys on "u:" + the normalized name (accounts.views).
    return fresh(lambda: f"u:victim{random.randrange(10**9)}", 60)[2:]


def test_password_guessing_is_cut_off_per_account(stranger, django_user_model):
    victim = fresh_account()
    django_user_model.objects.create_user(victim, password="not-a-guessable-one")
    codes = [
        stranger.post(
            "/accounts/login/", {"username": victim, "password": f"guess-{i}"}
        ).status_code
        for i in range(12)
    ]
    assert codes[:10] == [200] * 10 and codes[10:] == [429, 429]
    response = stranger.post("/accounts/login/", {"username": victim, "password": "x"})
    assert "Too many attempts" in response.content.decode()


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


def test_spelling_the_name_differently_does_not_reset_the_count(stranger, django_user_model):
    """Measured before the fix: "bob " and full-width "ｂｏｂ" each got a fresh counter of 10, and
    each still signed in as bob."""
    victim = fresh_account()
    django_user_model.objects.create_user(victim, password="not-a-guessable-one")
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in victim)
    spellings = [victim, victim + " ", " " + victim, full_width, victim.upper()]
    codes = [
        stranger.post(
            "/accounts/login/", {"username": spellings[i % len(spellings)], "password": "nope"}
        ).status_code
        for i in range(12)
    ]
    assert codes[:10] == [200] * 10 and codes[10:] == [429, 429]
    # The right password, spelled another way, is refused too while the limit holds.
    response = stranger.post(
        "/accounts/login/", {"username": full_width, "password": "not-a-guessable-one"}
    )
    assert response.status_code == 429


def test_rate_limited_api_requests_get_the_one_error_shape(rf):
    """Every API error, a 429 from django-ratelimit included, is {"error": {code, message}}."""
    import json

    from django_ratelimit.exceptions import Ratelimited

    from accounts.views import rate_limited

    response = rate_limited(rf.post("/api/v1/anything/"), Ratelimited())
    assert response.status_code == 429
    assert json.loads(response.content)["error"]["code"] == "rate_limited"
