"""The NAT lab: network namespaces and iptables that the tests create (no Django here).

    main namespace ── veth ──┐
    203.0.113.10             │         (the lab's "internet": a bridge in a namespace of its own,
                          [bridge]      on documentation addresses, 203.0.113.0/24)
    side 1 ── router 1 ──────┤
    side 2 ── router 2 ──────┘

Traverse and its relay listen in the main namespace on 203.0.113.10, where they reach
PostgreSQL and Redis on loopback as in every other test. Each side is a "home" namespace of its
own, of one network type, named as RFC 4787 names the behaviour:

- `open`: no NAT; the home sits on the internet segment with a public address;
- `endpoint-independent`: a NAT router with plain MASQUERADE (Linux keeps the source port, and a
  mapping serves every destination);
- `address-and-port-dependent`: MASQUERADE --random-fully (a new port for every destination:
  symmetric-like);
- `udp-blocked`: MASQUERADE, and the router drops UDP both ways and lets TCP out only to ports
  80 and 443, as corporate firewalls do (only TURN over TLS on 443 gets out).

Linux conntrack filters inbound traffic by address and port on every NAT type here: a packet
gets in only as a reply to one the home sent to that exact address and port.

Traffic goes only between these namespaces and the main namespace's lab address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

OPEN = "open"
EIM = "endpoint-independent"
APD = "address-and-port-dependent"
UDP_BLOCKED = "udp-blocked"
NETWORK_TYPES = (OPEN, EIM, APD, UDP_BLOCKED)

SERVER_ADDRESS = "203.0.113.10"
SECOND_ADDRESS = "203.0.113.11"  # a second relay's (two STUN servers, as RFC 5780 has)
WEB_PORT = 80  # Traverse serves the lab on 80, and its relays TURN over TLS on 443
PREFIX = 24


class LabUnavailable(RuntimeError):
    pass


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabUnavailable(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def _namespace(name: str) -> None:
    _run("ip", "netns", "add", name)
    _run("ip", "-n", name, "link", "set", "lo", "up")


def _address(netns: str, device: str, cidr: str) -> None:
    _run("ip", "-n", netns, "addr", "add", cidr, "dev", device)
    _run("ip", "-n", netns, "link", "set", device, "up")


def missing() -> str | None:
    """Why the lab can't run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab creates network namespaces: it needs root"
    for binary in ("ip", "iptables"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (`python3 dev.py test` installs it as root)"
    return None


@dataclass
class Side:
    """One home network: its namespace, and its address as the internet sees it (the router's,
    behind a NAT)."""

    index: int
    network_type: str
    netns: str
    address: str  # the home's own address
    public_address: str  # what the internet sees
    namespaces: list[str] = field(default_factory=list)


class NatLab:
    """The internet segment, and sides built on it and torn down per test."""

    def __init__(self, tag: str | None = None):
        self.tag = tag or str(os.getpid() % 10000)
        self.inet = f"tinet{self.tag}"
        self.host_if = f"tlab{self.tag}"
        self.sides: list[Side] = []

    # --- the internet ----------------------------------------------------------------------
    def start(self) -> None:
        why = missing()
        if why:
            raise LabUnavailable(why)
        self.stop()
        _run("ip", "netns", "add", self.inet)
        n = self.inet
        _run("ip", "-n", n, "link", "set", "lo", "up")
        _run("ip", "-n", n, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", n, "link", "set", "br0", "up")
        # The main namespace's leg: Traverse and the relay listen on it.
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "up0", "netns", n)
        _run("ip", "-n", n, "link", "set", "up0", "master", "br0")
        _run("ip", "-n", n, "link", "set", "up0", "up")
        _run("ip", "addr", "add", f"{SERVER_ADDRESS}/{PREFIX}", "dev", self.host_if)
        _run("ip", "addr", "add", f"{SECOND_ADDRESS}/{PREFIX}", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")

    def stop(self) -> None:
        self.clear_sides()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.inet], capture_output=True)

    # --- the homes -------------------------------------------------------------------------
    def side(self, index: int, network_type: str) -> Side:
        """A home network of `network_type` on the internet (index 1 or 2)."""
        if network_type not in NETWORK_TYPES:
            raise ValueError(f"unknown network type {network_type!r}")
        home, router = f"th{index}n{self.tag}", f"tr{index}n{self.tag}"
        _namespace(home)
        if network_type == OPEN:
            public = f"203.0.113.{20 + index}"
            self._internet_leg(home, index, public)
            side = Side(index, network_type, home, public, public, [home])
        else:
            public, lan_router, lan_home = (
                f"203.0.113.{index + 1}",
                f"10.0.{index}.1",
                f"10.0.{index}.2",
            )
            _namespace(router)
            self._internet_leg(router, index, public)
            _run("ip", "link", "add", "lan0", "netns", home, "type", "veth", "peer", "name", "lan0", "netns", router)  # fmt: skip
            _address(router, "lan0", f"{lan_router}/24")
            _address(home, "lan0", f"{lan_home}/24")
            _run("ip", "-n", home, "route", "add", "default", "via", lan_router)
            _run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self._firewall(router, network_type)
            side = Side(index, network_type, home, lan_home, public, [home, router])
        self.sides.append(side)
        return side

    def _internet_leg(self, netns: str, index: int, address: str) -> None:
        """A veth from `netns` (wan0) into the internet's bridge, with `address` on it."""
        port = f"s{index}p{self.tag}"  # the bridge's port towards this side
        _run("ip", "link", "add", "wan0", "netns", netns, "type", "veth", "peer", "name", port, "netns", self.inet)  # fmt: skip
        self._plug(port)
        _address(netns, "wan0", f"{address}/{PREFIX}")

    @staticmethod
    def _firewall(router: str, network_type: str) -> None:
        nat = ["ip", "netns", "exec", router, "iptables"]
        masquerade = [*nat, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"]
        if network_type == APD:
            masquerade.append("--random-fully")
        _run(*masquerade)
        # A home router's firewall: nothing unsolicited from the internet reaches the router
        # itself. Without it, a peer's check that arrives before this side's first packet to
        # that peer is delivered to the router, and conntrack keeps it as a connection of its
        # own; this side's packet to that peer then clashes with it, and MASQUERADE gives it
        # another port (a mapping that depends on the destination, which
        # `endpoint-independent` must not do). Dropped here, the entry is never confirmed.
        _run(*nat, "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")  # fmt: skip
        if network_type == UDP_BLOCKED:
            # A corporate firewall: no UDP, and TCP out only to the web's ports. TURN gets out
            # only over TLS on 443 (deploy/coturn/turnserver-443.conf).
            _run(*nat, "-A", "FORWARD", "-p", "udp", "-j", "DROP")
            _run(*nat, "-A", "FORWARD", "-o", "wan0", "-p", "tcp", "-m", "multiport", "!", "--dports", "80,443", "-j", "DROP")  # fmt: skip

    def _plug(self, port: str) -> None:
        _run("ip", "-n", self.inet, "link", "set", port, "master", "br0")
        _run("ip", "-n", self.inet, "link", "set", port, "up")

    def clear_sides(self) -> None:
        for side in self.sides:
            for ns in side.namespaces:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.sides.clear()
