"""How often one person may ring: per caller (CALL_START_RATE) and per caller -> callee pair
(CALL_PAIR_RATE). Measured before: 100 calls in 5 s rang every device of the victim 100 times.
Counters live in the Redis cache (config.ratelimits)."""

from __future__ import annotations

from django.conf import settings

from config.ratelimits import retry_after


def call_start_retry_after(request, *, callee) -> int | None:
    """None when this caller may ring this callee now; otherwise the seconds until they may.
    Counts the attempt. Raises the cache's errors when Redis is unreachable."""
    caller_id = request.user.pk
    limits = (
        ("calls.start", f"caller:{caller_id}", settings.CALL_START_RATE),
        ("calls.pair", f"pair:{caller_id}:{callee.pk}", settings.CALL_PAIR_RATE),
    )
    for group, key, rate in limits:
        wait = retry_after(group=group, key=key, rate=rate)
        if wait is not None:
            return wait
    return None
