"""The caller's IP address, one way for HTTP and WebSocket alike.

Behind nginx (deploy/nginx/traverse.conf), every request comes from the proxy, which puts the
client's address in `X-Real-IP`. That header is believed only when the peer is one of
TRUSTED_PROXIES (loopback by default): a client that talks to Daphne directly could send any
header it likes. Rate limits, region lookup and client-measured relay RTT all key on this.
"""

from __future__ import annotations

import functools
import ipaddress

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@functools.lru_cache(maxsize=8)
def _trusted(
    networks: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip_from(peer: str | None, real_ip: str | None) -> str | None:
    """The client's address: `real_ip` (the proxy's X-Real-IP) when `peer` is a trusted proxy
    and it is an address, else `peer`. None when neither is an address."""
    peer_address = _address(peer)
    # No peer address at all: the proxy came over a unix socket, which only local processes can.
    trusted = peer_address is None or any(
        peer_address in n for n in _trusted(tuple(settings.TRUSTED_PROXIES))
    )
    if trusted and real_ip:
        forwarded = _address(real_ip)
        if forwarded is not None:
            return str(forwarded)
    return str(peer_address) if peer_address is not None else None


def request_client_ip(request) -> str | None:
    """For a Django request (also django-ratelimit's RATELIMIT_IP_META_KEY)."""
    meta = request.META
    return client_ip_from(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_REAL_IP"))


def ratelimit_client_ip(request) -> str:
    """RATELIMIT_IP_META_KEY: django-ratelimit needs an address for every request."""
    ip = request_client_ip(request)
    if ip is None:
        raise ImproperlyConfigured(
            "No client address: neither REMOTE_ADDR nor, from a trusted proxy, X-Real-IP."
        )
    return ip


def scope_client_ip(scope) -> str | None:
    """For an ASGI (WebSocket) scope."""
    client = scope.get("client") or (None, None)
    real_ip = None
    for name, value in scope.get("headers", ()):
        if name == b"x-real-ip":
            real_ip = value.decode("latin-1")
            break
    return client_ip_from(client[0], real_ip)
