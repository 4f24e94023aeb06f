"""The Redis cache (config/cache.py) and the rate limits counted in it (config/ratelimits.py):
one client per process, `incr` in one round trip (django-ratelimit's decorators count with it),
and each rate-limited request counted in one."""

from __future__ import annotations

import time
import uuid

import pytest
from django.core.cache import cache
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from config.ratelimits import parse_rate, per_user_retry_after, retry_after

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
    assert commands == ["EVALSHA", "EVALSHA"]  # was EXISTS + INCRBY each
    assert cache.get(key) == 7
    cache.delete(key)


@pytest.mark.ratelimit
def test_a_per_user_limit_still_counts_and_refuses(commands, settings):
    settings.RATELIMIT_ENABLE = True

    class User:
        pk = f"cache-test-{uuid.uuid4().hex}"

    group = f"test.{uuid.uuid4().hex}"
    assert per_user_retry_after(user=User, group=group, rate="2/h") is None
    commands.clear()
    assert per_user_retry_after(user=User, group=group, rate="2/h") is None
    assert commands == ["EVALSHA"]  # was SET NX, then an increment
    wait = per_user_retry_after(user=User, group=group, rate="2/h")
    assert wait is not None and 3590 <= wait <= 3600  # the window began at the first count
    assert per_user_retry_after(user=User, group="other." + group, rate="2/h") is None


@pytest.mark.ratelimit
def test_a_window_starts_at_its_first_count_and_ends(settings):
    settings.RATELIMIT_ENABLE = True
    key = uuid.uuid4().hex
    assert retry_after(group="test", key=key, rate="1/2s") is None  # counted: 1 of 1
    assert retry_after(group="test", key=key, rate="1/2s") in (1, 2)  # 2 of 1: wait
    # A changed setting is a new count (the rate is in the counter's name).
    assert retry_after(group="test", key=key, rate="5/2s") is None
    time.sleep(2.2)
    assert retry_after(group="test", key=key, rate="1/2s") is None  # a new window


@pytest.mark.ratelimit
def test_counting_goes_on_after_redis_forgets_its_scripts(settings):
    """A restarted Redis has none of the scripts loaded: the count is sent again in full, once."""
    settings.RATELIMIT_ENABLE = True
    key = uuid.uuid4().hex
    assert retry_after(group="test", key=key, rate="2/h") is None
    cache._cache.get_client(key, write=True).script_flush()
    assert retry_after(group="test", key=key, rate="2/h") is None
    assert retry_after(group="test", key=key, rate="2/h") is not None
    incr_key = f"test-incr-{key}"
    cache.add(incr_key, 1, 60)
    cache._cache.get_client(incr_key, write=True).script_flush()
    assert cache.incr(incr_key) == 2


def test_counting_off_counts_nothing(settings, commands):
    settings.RATELIMIT_ENABLE = False
    for _ in range(3):
        assert retry_after(group="test", key="k", rate="1/h") is None
    assert commands == []


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("20/m", (20, 60)), ("5/10s", (5, 10)), ("100/2h", (100, 7200)), ("3/day", (3, 86400))],
)
def test_rates_are_read_as_django_ratelimit_writes_them(rate, parsed):
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["", "20", "20/", "x/m", "20/w", "20/0m", "-1/m"])
def test_a_malformed_rate_is_refused(rate):
    with pytest.raises(ImproperlyConfigured, match="rate"):
        parse_rate(rate)


def test_a_malformed_rate_setting_fails_the_start_up_checks(settings):
    settings.ICE_ISSUE_RATE = "60 a minute"
    errors = [e for e in run_checks() if e.id == "config.E001"]
    assert [e.msg.split(":")[0] for e in errors] == ["ICE_ISSUE_RATE"]
