import pytest

from relays.services import relay_create


@pytest.fixture
def registered(coturn):
    """Register a real coturn relay under a name; returns (relay, server)."""

    def make(name: str, *, secret_override: str | None = None, **kwargs):
        server = coturn(allow_loopback_peers=False)
        relay = relay_create(
            allow_private=True,
            private_reason="a test rig on loopback",
            name=name,
            urls=server.urls,
            secret=secret_override or server.secret,
            **kwargs,
        )
        return relay, server

    return make


def probe(urls, secret, *, timeout=2.0, **plan):
    """Run the real probe against real relays: the same ProbePlan the sweep builds."""
    import asyncio

    from relays.credentials import turn_rest_pair
    from relays.ice_urls import parse_ice_url
    from relays.probes import ProbePlan, probe_relay

    defaults = {"packets": 0, "audit": False, "check_credentials": False}
    return asyncio.run(
        probe_relay(
            ProbePlan(
                urls=[parse_ice_url(u) for u in urls],
                credentials=lambda exp: turn_rest_pair(
                    secret=secret, expires_at=exp, opaque_id="probe-test"
                ),
                timeout=timeout,
                **{**defaults, **plan},
            )
        )
    )
