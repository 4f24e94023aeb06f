import pytest

from relays.services import relay_create


@pytest.fixture
def registered(coturn):
    """Register a real coturn relay under a name; returns (relay, server)."""

    def make(name: str, *, secret_override: str | None = None, **kwargs):
        server = coturn(allow_loopback_peers=False)
        relay = relay_create(
            name=name, urls=server.urls, secret=secret_override or server.secret, **kwargs
        )
        return relay, server

    return make
