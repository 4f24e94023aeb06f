"""Where a relay is: the addresses its URLs resolve to, and which of them are not public.

A relay on a private, loopback, link-local, CGNAT or documentation address is either a test rig
or a mistake (a typo'd internal name, a cloud metadata address such as 169.254.169.254), and
callers on the internet could not reach it anyway. Registering one takes an explicit
`allow_private` with a reason. This is about where the relay itself is; what it lets callers
reach is the safety audit's business (relays.probes). No Django here.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from .ice_urls import parse_ice_url


@dataclass(frozen=True)
class AddressFinding:
    url: str
    host: str
    address: str | None  # None when the host did not resolve
    problem: str


def resolve(host: str) -> list[str]:
    """The addresses a host name (or literal) stands for; [] when it does not resolve."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def non_public_addresses(urls: list[str], *, resolver=resolve) -> list[AddressFinding]:
    """Every address of these URLs that is not globally routable, and every host that does not
    resolve (it can't be checked, so it can't be called public)."""
    findings = []
    for text in urls:
        url = parse_ice_url(text)
        addresses = resolver(url.host)
        if not addresses:
            findings.append(AddressFinding(text, url.host, None, "does not resolve"))
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not ip.is_global or ip.is_multicast or ip.is_unspecified:
                findings.append(AddressFinding(text, url.host, address, _kind(ip)))
    return findings


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for attr, name in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private or reserved"),
    ):
        if getattr(ip, attr):
            return name
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (CGNAT)"
    return "not globally routable"


def describe(findings: list[AddressFinding]) -> str:
    said = [
        f"{f.host} {f.problem}" if f.address is None else f"{f.host} is {f.address} ({f.problem})"
        for f in findings
    ]
    return "; ".join(dict.fromkeys(said))  # one mention per host and address
