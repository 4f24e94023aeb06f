"""ICE server URLs (RFC 7064 stun:/stuns:, RFC 7065 turn:/turns:), parsed without Django.

Written here because no maintained library parses these URIs; urllib does not treat the
opaque `host:port` part of `turn:` as a netloc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}
_URL_RE = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


class IceUrlError(ValueError):
    """The text is not a stun:, stuns:, turn: or turns: URL we can use."""


@dataclass(frozen=True)
class IceUrl:
    url: str
    scheme: str
    host: str  # without brackets for IPv6
    port: int
    transport: str  # "udp" or "tcp" (TLS runs over tcp)

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    @property
    def tls(self) -> bool:
        return self.scheme in ("stuns", "turns")

    @property
    def stun_url(self) -> str | None:
        """The STUN server here: a stun: URL itself, or a TURN server's plain UDP port (which
        answers STUN Binding too); None for the others."""
        if self.scheme == "stun":
            return self.url
        if self.scheme == "turn" and self.transport == "udp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"stun:{host}:{self.port}"
        return None

    @property
    def label(self) -> str:
        """The transport as admins think of it: udp, tcp or tls."""
        return "tls" if self.tls else self.transport


def parse_ice_url(text: str) -> IceUrl:
    m = _URL_RE.match(text.strip())
    if not m:
        raise IceUrlError(
            f"{text!r} is not an ICE URL: expected stun:HOST[:PORT] or turn(s):HOST[:PORT][?transport=udp|tcp]"
        )
    scheme = m["scheme"]
    port = int(m["port"]) if m["port"] else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise IceUrlError(f"{text!r}: port {port} is out of range")
    transport = m["transport"] or ("tcp" if scheme in ("stuns", "turns") else "udp")
    if scheme.startswith("stun") and m["transport"]:
        raise IceUrlError(f"{text!r}: stun URLs take no ?transport= (RFC 7064)")
    if scheme in ("stuns", "turns") and transport != "tcp":
        raise IceUrlError(f"{text!r}: TLS runs over tcp only")
    return IceUrl(
        url=text.strip(), scheme=scheme, host=m["host"].strip("[]"), port=port, transport=transport
    )
