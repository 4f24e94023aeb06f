"""Bad input and outages get a clear answer in the API's one error shape, and nothing is left
half-done: a call that was started is either rung or not created."""

from __future__ import annotations

import random
import time

import pytest
from django.utils import timezone

from calls.models import Call, Participant
from relays.models import CredentialGrant, Relay, RelayStatus

pytestmark = pytest.mark.django_db

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.mark.smoke
@pytest.mark.parametrize("depth", [100, 5_000, 100_000])
def test_json_of_any_depth_is_a_400(client, alice, depth):
    """Measured before: 5,000 levels answered 500 (RecursionError in the JSON parser)."""
    client.force_login(alice)
    body = "[" * depth + "]" * depth
    response = client.post("/api/v1/calls/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("bad_json", "invalid")
    assert not Call.objects.exists()


@pytest.mark.ratelimit
def test_call_starts_are_rate_limited_per_caller(client, django_user_model, settings):
    settings.CALL_START_RATE, settings.CALL_PAIR_RATE = "4/m", "100/m"
    caller = django_user_model.objects.create_user(f"caller{random.randrange(10**9)}")
    callees = [
        django_user_model.objects.create_user(f"callee{random.randrange(10**9)}") for _ in range(6)
    ]
    client.force_login(caller)
    codes, last = [], None
    for callee in callees:
        last = client.post(
            "/api/v1/calls/", {"callee": callee.username}, content_type="application/json"
        )
        codes.append(last.status_code)
    # The fixed window may roll over once mid-test: at most one extra 201.
    assert codes[:4] == [201] * 4 and 429 in codes[4:], codes
    limited = next(r for r in [last] if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert Call.objects.filter(created_by=caller).count() == codes.count(201)


@pytest.mark.ratelimit
def test_call_starts_are_rate_limited_per_pair(client, django_user_model, settings):
    settings.CALL_START_RATE, settings.CALL_PAIR_RATE = "100/m", "2/m"
    caller = django_user_model.objects.create_user(f"caller{random.randrange(10**9)}")
    victim = django_user_model.objects.create_user(f"victim{random.randrange(10**9)}")
    other = django_user_model.objects.create_user(f"other{random.randrange(10**9)}")
    client.force_login(caller)

    def ring(user):
        return client.post(
            "/api/v1/calls/", {"callee": user.username}, content_type="application/json"
        ).status_code

    codes = [ring(victim) for _ in range(4)]
    assert codes[:2] == [201, 201] and codes[-1] == 429, codes
    assert ring(other) == 201  # only that pair is limited
    # The web form says so too.
    response = client.post("/", {"callee": victim.username})
    assert response.status_code == 429 and "Too many calls" in response.content.decode()


def test_redis_unreachable_sign_in_is_a_503(client, alice, password, settings):
    """Measured before: 500. The rate-limit counters live in Redis."""
    settings.RATELIMIT_ENABLE = True
    settings.CACHES = {
        "default": {
            "BACKEND": "config.cache.RedisCache",
            "LOCATION": DEAD_REDIS,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    response = client.post("/accounts/login/", {"username": "alice", "password": password})
    assert response.status_code == 503 and response["Retry-After"]
    assert "can&#x27;t reach its Redis server" in response.content.decode()


def test_redis_unreachable_call_start_is_a_503_and_nothing_is_stored(client, alice, bob, settings):
    """Measured before: 500, yet the call was created and the callee never rung."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": DEAD_REDIS, "socket_connect_timeout": 0.5}]},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)  # (a fresh one per test: tests/conftest.py)
    try:
        client.force_login(alice)
        response = client.post("/api/v1/calls/", {"callee": "bob"}, content_type="application/json")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        assert not Call.objects.exists() and not Participant.objects.exists()
        # The web form: the same, as a page.
        response = client.post("/", {"callee": "bob"})
        assert response.status_code == 503 and not Call.objects.exists()
    finally:
        channel_layers.backends.pop("default", None)


CHILD = """
import collections, os, sys, django
django.setup()
from django.test import Client
from accounts.models import User
c = Client()
c.force_login(User.objects.get(username="alice"))
codes = collections.Counter(c.get("/api/v1/ice-servers/").status_code for _ in range(int(sys.argv[1])))
import json
print(json.dumps({str(k): v for k, v in codes.items()}))
"""


@pytest.mark.smoke
@pytest.mark.django_db(transaction=True)
def test_concurrent_ice_requests_never_fail_and_leave_no_orphan_grants(alice):
    """Eight processes (as Daphne, the worker and beat share the embedded SQLite file) ask for
    ICE servers at once. Measured before: 163 of 500 requests answered 500 (`database is
    locked`), and grants were left without relays."""
    import json
    import os
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT, database_url_for_subprocess

    Relay.objects.create(
        name="r1",
        urls=["turn:r1.example:3478?transport=udp"],
        secret="a-long-enough-relay-secret",
        status=RelayStatus.UP,
        last_checked_at=timezone.now() + timezone.timedelta(minutes=5),
        audited_at=timezone.now(),
    )
    env = {**os.environ, "DATABASE_URL": database_url_for_subprocess()}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["DJANGO_ALLOWED_HOSTS"] = "testserver"
    # One user asks 504 times: neither the per-user issue rate nor the grant cap is what this
    # test is about (tests/relays/test_assignment.py tests both).
    env["ICE_ISSUE_RATE"] = "100000/m"
    env["ICE_GRANTS_PER_USER"] = "100000"
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, "63"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    totals: dict[str, int] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        for code, n in json.loads(out.strip().splitlines()[-1]).items():
            totals[code] = totals.get(code, 0) + n
    assert totals == {"200": 504}, totals
    assert CredentialGrant.objects.count() == 504
    assert not CredentialGrant.objects.filter(relays__isnull=True).exists()
    print(f"504 ICE requests from 8 processes in {time.monotonic() - started:.1f} s")
