"""coturn configuration that matches what Traverse hands out (no Django here).

Used by `dev.py run` for the local relay, by the tests for their throwaway relays, and mirrored
by deploy/coturn/turnserver.conf. `use-auth-secret` makes coturn check the TURN REST credentials
that relays.credentials issues; `denied-peer-ip` keeps the relay from reaching private and
loopback addresses (the SSRF class of CVE-2020-26262 and CVE-2026-27624).
"""

from __future__ import annotations

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
    log_file: str = "stdout",
    tls_port: int | None = None,
    cert: str | None = None,
    pkey: str | None = None,
    extra: list[str] | None = None,
) -> str:
    """A turnserver.conf. `allow_loopback_peers` is for loopback-only test rigs, never production:
    it is the only way two browsers on one machine can meet through a relay bound to 127.0.0.1."""
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
        lines += [f"denied-peer-ip={r}" for r in DENIED_PEER_RANGES]
    lines += extra or []
    return "\n".join(lines) + "\n"


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
