"""The network test's verdict (no Django here): what a user's browser found, in, and one plain
sentence about calls from that network, out. The page (static/js/nettest.js) gathers the facts;
the server decides, so the API, the stored results and the fleet page agree.

Network types are named as RFC 4787 names NAT behaviour, and as the NAT lab (tests/nat) builds
them: `open` (no NAT: the address STUN sees is the browser's own), `endpoint-independent` (one
mapping for every destination: direct calls work with most peers),
`address-and-port-dependent` (a new mapping per destination: direct only with peers that have
no NAT), `udp-blocked` (no UDP gets out: only TURN over TCP or TLS), and `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .ice_urls import IceUrl


class NetworkType(StrEnum):
    OPEN = "open"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UDP_BLOCKED = "udp-blocked"
    UNKNOWN = "unknown"


class Verdict(StrEnum):
    DIRECT = "direct"  # direct calls should work
    RELAY = "relay"  # calls need a relay (over UDP)
    MAYBE = "maybe"  # UDP gets out; one STUN server can't tell which NAT this is
    TCP = "tcp"  # no UDP: TURN over TCP or TLS
    TLS_443 = "tls-443"  # only TURN over TLS on port 443 gets out
    NONE = "none"  # nothing got out: calls won't connect
    UNTESTED = "untested"  # the server had no STUN or TURN server to test against


SENTENCES = {
    Verdict.DIRECT: "Direct calls should work from this network.",
    Verdict.RELAY: "Calls from here will need a relay.",
    Verdict.MAYBE: "UDP gets out: direct calls may work, and a relay is ready when they don't.",
    Verdict.TCP: "Your network blocks UDP: calls will use TURN over TCP or TLS.",
    Verdict.TLS_443: "Your network lets only port 443 out: calls will use TURN over TLS on 443.",
    Verdict.NONE: "Calls can't get out of this network: neither STUN nor any relay answered.",
    Verdict.UNTESTED: "There was nothing to test against: this server has no relay up. "
    "Ask its admin to add one.",
}


@dataclass(frozen=True)
class Mapping:
    """A server-reflexive address STUN server `server` saw for the browser's socket `base`."""

    server: str
    address: str
    port: int
    base: str = ""  # "host:port" of the local socket, when the browser shows it


@dataclass(frozen=True)
class RelayCheck:
    url: IceUrl  # a turn: or turns: URL
    ok: bool
    ms: float | None = None

    @property
    def transport(self) -> str:
        """udp, tcp or tls."""
        return self.url.label


@dataclass
class Facts:
    mappings: list[Mapping] = field(default_factory=list)
    host_addresses: list[str] = field(default_factory=list)
    stun_servers: int = 0  # how many distinct STUN servers were asked
    client_ip: str = ""  # the address the server saw the browser come from
    relays: list[RelayCheck] = field(default_factory=list)

    @property
    def udp(self) -> bool:
        """Whether any UDP got out: a STUN answer, or a relay over UDP."""
        return bool(self.mappings) or any(r.ok and r.transport == "udp" for r in self.relays)


def network_type(facts: Facts) -> NetworkType:
    """The NAT's kind, from the addresses gathered against the STUN servers.

    Chromium drops a server-reflexive candidate that another STUN server already gave, and one
    equal to the socket's own address: so an endpoint-independent NAT shows one mapping though
    two servers were asked, and a network with no NAT shows none (its own address is the one
    the server saw the page come from).
    """
    udp_relay = any(r.ok and r.transport == "udp" for r in facts.relays)
    udp_tried = facts.stun_servers > 0 or any(r.transport == "udp" for r in facts.relays)
    if facts.client_ip and facts.client_ip in facts.host_addresses:
        if facts.udp:
            return NetworkType.OPEN
        return NetworkType.UDP_BLOCKED if udp_tried else NetworkType.UNKNOWN
    if facts.mappings:
        # The same local socket mapped to different public ports for different servers: the
        # mapping depends on the destination.
        by_base: dict[str, set[tuple[str, int]]] = {}
        for m in facts.mappings:
            by_base.setdefault(m.base, set()).add((m.address, m.port))
        if any(len(seen) > 1 for seen in by_base.values()):
            return NetworkType.ADDRESS_AND_PORT_DEPENDENT
        if facts.stun_servers >= 2:
            return NetworkType.ENDPOINT_INDEPENDENT
        return NetworkType.UNKNOWN  # one STUN server can't tell the two apart
    if udp_relay:
        return NetworkType.UNKNOWN  # UDP got out, yet STUN did not answer
    return NetworkType.UDP_BLOCKED if udp_tried else NetworkType.UNKNOWN


def verdict(facts: Facts) -> tuple[NetworkType, Verdict]:
    if not facts.stun_servers and not facts.relays:
        return NetworkType.UNKNOWN, Verdict.UNTESTED
    kind = network_type(facts)
    relayed = [r for r in facts.relays if r.ok]
    if kind in (NetworkType.OPEN, NetworkType.ENDPOINT_INDEPENDENT):
        return kind, Verdict.DIRECT
    if kind == NetworkType.ADDRESS_AND_PORT_DEPENDENT:
        return kind, Verdict.RELAY
    if kind == NetworkType.UNKNOWN and facts.mappings:
        return kind, Verdict.MAYBE
    if any(r.transport == "udp" for r in relayed):
        return kind, Verdict.RELAY
    if relayed:
        if all(r.transport == "tls" and r.url.port == 443 for r in relayed) and any(
            r.url.port != 443 for r in facts.relays
        ):
            return NetworkType.UDP_BLOCKED, Verdict.TLS_443
        return NetworkType.UDP_BLOCKED, Verdict.TCP
    return kind, Verdict.NONE
