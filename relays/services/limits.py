"""Per-user rate limits on what a signed-in client can trigger (django-ratelimit's fixed windows,
in the Redis cache; off with RATELIMIT_ENABLE)."""

from __future__ import annotations

from django_ratelimit.core import get_usage


def per_user_retry_after(*, user, group: str, rate: str) -> int | None:
    """Count one for `user` in `group`; None while under `rate`, else the seconds to wait."""
    usage = get_usage(
        None,
        group=group,
        key=lambda _group, _request: f"user:{user.pk}",
        rate=rate,
        increment=True,
    )
    if usage and usage["should_limit"]:
        return max(1, int(usage["time_left"]))
    return None
