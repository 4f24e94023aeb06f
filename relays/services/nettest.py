"""The network test: what a user's browser found, stored with its verdict (relays.nettest)."""

from __future__ import annotations

from django.conf import settings

from config.ratelimits import per_user_retry_after

from ..models import NetworkTestResult
from ..nettest import Facts, verdict
from ..selectors import stun_fallback_urls


class NetworkTestLimited(Exception):
    code = "network_test_limited"

    def __init__(self, retry_after: int):
        self.retry_after = max(1, int(retry_after))
        super().__init__(f"Too many network tests; try again in {self.retry_after} s.")


def network_test_stun_urls(limit: int = 2) -> list[str]:
    """The STUN servers the test asks, at most `limit` distinct addresses: two tell an
    endpoint-independent NAT from one that maps every destination anew."""
    return stun_fallback_urls()[:limit]


def network_test_record(*, user, network: str, facts: Facts, details: dict) -> NetworkTestResult:
    """Store one run for `user` on `network` (its /24 or /48). Raises NetworkTestLimited past
    NETWORK_TEST_RATE."""
    wait = per_user_retry_after(user=user, group="relays.nettest", rate=settings.NETWORK_TEST_RATE)
    if wait is not None:
        raise NetworkTestLimited(wait)
    kind, decided = verdict(facts)
    return NetworkTestResult.objects.create(
        user=user,
        network=network,
        network_type=kind,
        verdict=decided,
        udp=facts.udp,
        details=details,
    )
