"""coturn configuration that matches what Traverse hands out (no Django here).

Used by `dev.py run` for the local relay, by the tests for their throwaway relays, and mirrored
by deploy/coturn/turnserver.conf. `use-auth-secret` makes coturn check the TURN REST credentials
that relays.credentials issues; `denied-peer-ip` keeps the relay from reaching private and
loopback addresses (the SSRF class of CVE-2020-26262 and CVE-2026-27624).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

# Peers a relay must never reach: loopback, RFC 1918, link-local (cloud metadata), CGNAT,
# "this network", multicast/reserved, and their IPv6 counterparts.
DENIED_PEER_RANGES = [
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
]


def render_coturn_config(
    *,
    listen_ip: str,
    port: int,
    secret: str,
    realm: str,
    state_dir: str,
    min_port: int = 49160,
    max_port: int = 49200,
    relay_ip: str | None = None,
    allow_loopback_peers: bool = False,
    between_own_allocations: bool = False,
    log_file: str = "stdout",
    tls_port: int | None = None,
    cert: str | None = None,
    pkey: str | None = None,
    extra: list[str] | None = None,
) -> str:
    """A turnserver.conf. `allow_loopback_peers` is for loopback-only test rigs, never production:
    every loopback and private peer is let through.

    `between_own_allocations` is the safe way for two browsers on one machine to meet through a
    relay bound to loopback (the run command's local relay): the relay relays from an address of
    its own on loopback (`relay_ip`, e.g. 127.0.0.2), and lets through that one address as a
    peer, which is where its other allocations are. Every range stays denied otherwise, so the
    safety audit still finds 127.0.0.1, ::1 and the private ranges refused."""
    if between_own_allocations:
        if allow_loopback_peers:
            raise ValueError("between_own_allocations narrows the denied ranges; don't combine it")
        if relay_ip is None or not ipaddress.ip_address(relay_ip).is_loopback:
            raise ValueError("between_own_allocations needs a relay_ip on loopback")
        if relay_ip == listen_ip:
            raise ValueError(
                "between_own_allocations needs a relay_ip of its own: letting the listening "
                "address through would let peers reach whatever else listens there"
            )
    lines = [
        f"listening-ip={listen_ip}",
        f"listening-port={port}",
        f"relay-ip={relay_ip or listen_ip}",
        f"min-port={min_port}",
        f"max-port={max_port}",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={realm}",
        "fingerprint",
        "no-dtls",
        "no-cli",
        "no-multicast-peers",
        "no-software-attribute",
        f"log-file={log_file}",
        "simple-log",
        f"pidfile={state_dir}/turnserver.pid",
        f"userdb={state_dir}/turndb.sqlite",
    ]
    if tls_port and cert and pkey:
        lines += [f"tls-listening-port={tls_port}", f"cert={cert}", f"pkey={pkey}"]
    else:
        lines.append("no-tls")
    if allow_loopback_peers:
        lines.append("allow-loopback-peers")
    else:
        if between_own_allocations:
            # coturn checks allowed-peer-ip before denied-peer-ip, and loopback peers only
            # when allow-loopback-peers is on: together, this one loopback address and no other.
            lines += ["allow-loopback-peers", f"allowed-peer-ip={relay_ip}"]
        lines += [f"denied-peer-ip={r}" for r in DENIED_PEER_RANGES]
    lines += extra or []
    return "\n".join(lines) + "\n"


# Where the run command's local relay relays from: an address of its own on loopback, so that
# letting its allocations reach each other lets nothing else on 127.0.0.1 through.
RUN_COMMAND_RELAY_IP = "127.0.0.2"


def run_command_relay_options() -> dict[str, Any]:
    """render_coturn_config's options for the run command's local relay (listening on 127.0.0.1):
    relaying between its own allocations from RUN_COMMAND_RELAY_IP, where it can be bound (all
    of 127.0.0.0/8 is loopback on Linux; macOS has only 127.0.0.1 unless told), else nothing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((RUN_COMMAND_RELAY_IP, 0))
    except OSError:
        return {}
    return {"relay_ip": RUN_COMMAND_RELAY_IP, "between_own_allocations": True}


def statsdb_option(redis_url: str) -> str:
    """coturn's `redis-statsdb` line for a redis:// URL: where the relay publishes its
    allocations and traffic (relays.allocations). coturn reaches Redis over TCP only."""
    parsed = urlsplit(redis_url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"coturn publishes to a redis://host:port/db URL, not {parsed.scheme}://")
    db = (parsed.path or "/0").strip("/") or "0"
    parts = [f"ip={parsed.hostname}", f"dbname={int(db)}", f"port={parsed.port or 6379}"]
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    parts.append("connect_timeout=5")
    return f'redis-statsdb="{" ".join(parts)}"'
