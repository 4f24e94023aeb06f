"""Rate limits on what a signed-in caller or an API key can trigger: relay credentials, relay
reports, network tests, calls started (per caller and per caller -> callee pair), API requests.

Each is a fixed window in the Redis cache that starts at its first count, counted in one round
trip (config.cache.RedisCache.hit). django-ratelimit's `get_usage` took two (SET NX, then an
increment) and 0.9 ms of CPU each time (issue 9); DRF's throttle read and wrote a pickled list
of every request's time in the window (up to API_KEY_RATE of them). django-ratelimit's decorators
still guard what a stranger can reach (the sign-in views, per address).

Off with RATELIMIT_ENABLE. Redis's errors propagate: the caller answers 503, not "allowed"."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.cache import caches
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from .cache import RedisCache

# Every rate setting, checked at start-up (a typo shows then, not as a 500 in a call).
RATE_SETTINGS = (
    "ICE_ISSUE_RATE",
    "RELAY_REPORT_RATE",
    "RELAY_GATHER_RATE",
    "NETWORK_TEST_RATE",
    "CALL_START_RATE",
    "CALL_PAIR_RATE",
    "API_KEY_RATE",
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\w*\s*$")


def parse_rate(rate: str) -> tuple[int, int]:
    """django-ratelimit's notation: "20/m", "5/10s", "100/2h" -> (how many, in seconds)."""
    match = _RATE.match(rate or "")
    if match is None:
        raise ImproperlyConfigured(f"Not a rate: {rate!r} (e.g. 20/m, 5/10s, 100/2h).")
    count, multiple, unit = match.groups()
    seconds = int(multiple or 1) * _UNITS[unit]
    if seconds <= 0:
        raise ImproperlyConfigured(f"A rate's period must be longer than 0: {rate!r}.")
    return int(count), seconds


def retry_after(*, group: str, key: str, rate: str) -> int | None:
    """Count one for `key` in `group`: None while within `rate`, else the seconds until its
    window ends. The rate is in the counter's name: a changed setting starts a new count."""
    if not settings.RATELIMIT_ENABLE:
        return None
    limit, seconds = parse_rate(rate)
    cache = caches[getattr(settings, "RATELIMIT_USE_CACHE", "default")]
    if not isinstance(cache, RedisCache):
        raise ImproperlyConfigured("Rate limits count in config.cache.RedisCache.")
    count, left = cache.hit(f"rl:{group}:{rate}:{key}", seconds)
    return None if count <= limit else max(1, left)


def per_user_retry_after(*, user, group: str, rate: str) -> int | None:
    """retry_after() for one user."""
    return retry_after(group=group, key=f"user:{user.pk}", rate=rate)


@register()
def rate_settings_check(app_configs, **kwargs):
    errors = []
    for name in RATE_SETTINGS:
        try:
            parse_rate(getattr(settings, name))
        except ImproperlyConfigured as exc:
            errors.append(Error(f"{name}: {exc}", id="config.E001"))
    return errors
