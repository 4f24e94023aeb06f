"""The Redis cache (config/cache.py): one client per process, and `incr` in one round trip
(django-ratelimit counts every rate-limited request with it)."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache

from relays.services.limits import per_user_retry_after

pytestmark = pytest.mark.smoke


@pytest.fixture
def commands(monkeypatch):
    """Every command the cache's client sends to Redis (the real client, counted)."""
    client = cache._cache.get_client("any", write=True)
    sent: list[str] = []
    real = type(client).execute_command

    def counted(self, *args, **options):
        sent.append(str(args[0]).upper())
        return real(self, *args, **options)

    monkeypatch.setattr(type(client), "execute_command", counted)
    return sent


def test_incr_is_djangos_in_one_round_trip(commands):
    key = f"test-incr-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="not found"):
        cache.incr(key)
    assert cache.get(key) is None  # nothing made by the failed incr
    assert cache.add(key, 1, 60)
    commands.clear()
    assert cache.incr(key) == 2 and cache.incr(key, 5) == 7
    assert commands == ["EVAL", "EVAL"]  # was EXISTS + INCRBY each
    assert cache.get(key) == 7
    cache.delete(key)


@pytest.mark.ratelimit
def test_a_per_user_limit_still_counts_and_refuses(commands, settings):
    settings.RATELIMIT_ENABLE = True

    class User:
        pk = f"cache-test-{uuid.uuid4().hex}"

    group = f"test.{uuid.uuid4().hex}"
    assert per_user_retry_after(user=User, group=group, rate="2/h") is None  # SET NX
    commands.clear()
    assert per_user_retry_after(user=User, group=group, rate="2/h") is None
    assert commands == ["SET", "EVAL"]  # add (refused: counted already), then incr
    wait = per_user_retry_after(user=User, group=group, rate="2/h")
    assert wait is not None and 1 <= wait <= 3600
