"""How often one person may ring: per caller (CALL_START_RATE) and per caller -> callee pair
(CALL_PAIR_RATE). Measured before: 100 calls in 5 s rang every device of the victim 100 times.
Counters live in the Redis cache (django-ratelimit's fixed windows)."""

from __future__ import annotations

from django.conf import settings
from django_ratelimit.core import get_usage


def call_start_retry_after(request, *, callee) -> int | None:
    """None when this caller may ring this callee now; otherwise the seconds until they may.
    Counts the attempt. Raises the cache's errors when Redis is unreachable."""
    caller_id = request.user.pk
    limits = (
        ("calls.start", f"caller:{caller_id}", settings.CALL_START_RATE),
        ("calls.pair", f"pair:{caller_id}:{callee.pk}", settings.CALL_PAIR_RATE),
    )
    for group, key, rate in limits:
        usage = get_usage(
            request,
            group=group,
            key=lambda _group, _request, _key=key: _key,
            rate=rate,
            increment=True,
        )
        if usage and usage["should_limit"]:
            return max(1, usage["time_left"])
    return None
