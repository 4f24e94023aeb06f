"""Relay probes: plain asyncio around aioice, with no Django in it.

A probe answers "does this relay work right now, on what it advertises?":
- a STUN Binding, with its round-trip time, on every stun: URL (or on the first UDP turn: URL
  when the relay advertises no stun: URL; coturn answers Binding on its TURN port);
- a TURN Allocate with TURN REST credentials on every turn:/turns: URL, then a deletion
  (Refresh with lifetime 0) so probes leave no allocation behind.

Every network step is bounded with asyncio.wait_for: aioice retransmits over UDP for 63.5 s
before it gives up on a dead server, and it ignores ICMP port-unreachable.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from aioice import stun
from aioice.turn import create_turn_endpoint

from .ice_urls import IceUrl

# STUN over UDP: retransmit quickly at first (RFC 8489 uses 500 ms; a probe wants an answer
# within its timeout, and loopback relays answer in well under a millisecond).
_RETRANSMIT_S = (0.1, 0.2, 0.4, 0.8, 1.6)


@dataclass
class UrlResult:
    url: str
    kind: str  # "stun" (Binding) or "turn" (Allocate)
    ok: bool
    ms: float | None
    error: str | None = None  # error class: timeout, refused, 401, 403, 437, tls, network, …
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RelayReport:
    results: list[UrlResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def rtt_ms(self) -> float | None:
        """The best STUN Binding round trip, the figure selection ranks by."""
        rtts = [r.ms for r in self.results if r.kind == "stun" and r.ok and r.ms is not None]
        return min(rtts) if rtts else None

    @property
    def error(self) -> str:
        return "; ".join(
            f"{r.url}: {r.error}{' (' + r.detail + ')' if r.detail else ''}"
            for r in self.results
            if not r.ok
        )


class _StunClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        fut = self.pending.get(message.transaction_id)
        if fut is not None and not fut.done():
            fut.set_result(message)

    def error_received(self, exc: Exception) -> None:
        # Linux reports ICMP port-unreachable on a connected UDP socket: fail fast as "refused".
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)


async def stun_binding(host: str, port: int) -> float:
    """One STUN Binding over UDP; returns the round trip in milliseconds. Unbounded: wrap it."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_StunClient, remote_addr=(host, port))
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        fut: asyncio.Future = loop.create_future()
        proto.pending[request.transaction_id] = fut
        data = bytes(request)
        t0 = time.perf_counter()
        for wait in (*_RETRANSMIT_S, None):
            transport.sendto(data)
            try:
                response = await asyncio.wait_for(asyncio.shield(fut), wait) if wait else await fut
                break
            except TimeoutError:
                continue
        rtt = (time.perf_counter() - t0) * 1000
        if response.message_class != stun.Class.RESPONSE:
            raise stun.TransactionFailed(response)
        return rtt
    finally:
        transport.close()


class _Sink(asyncio.DatagramProtocol):
    pass


async def turn_allocate(
    target: IceUrl, username: str, password: str, *, verify_tls: bool = True, timeout: float
) -> float:
    """A TURN Allocate, then its deletion; returns the Allocate time in milliseconds."""
    ctx: ssl.SSLContext | None = None
    if target.tls:
        ctx = ssl.create_default_context()
        if not verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    t0 = time.perf_counter()
    turn, _ = await asyncio.wait_for(
        create_turn_endpoint(
            _Sink,
            server_addr=(target.host, target.port),
            username=username,
            password=password,
            lifetime=60,
            ssl=ctx,
            transport=target.transport,
        ),
        timeout,
    )
    ms = (time.perf_counter() - t0) * 1000
    try:
        await asyncio.wait_for(turn._close(), timeout)  # Refresh(lifetime=0): leave nothing behind
    except (TimeoutError, OSError, stun.TransactionError):
        pass  # the allocation expires on its own within its 60 s lifetime
    return ms


def classify_error(exc: BaseException) -> tuple[str, str]:
    """Turn an exception into (error class, detail) that admins and the CLI can read."""
    if isinstance(exc, stun.TransactionFailed):
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        return str(code), str(reason)
    if isinstance(exc, TimeoutError | stun.TransactionTimeout):
        return "timeout", "no answer within the probe timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "nothing listens on that port"
    if isinstance(exc, ssl.SSLError):
        return "tls", str(exc.reason or exc)
    if isinstance(exc, OSError):
        return "network", os.strerror(exc.errno) if exc.errno else str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


async def _timed(kind: str, url: str, coro, timeout: float) -> UrlResult:
    try:
        ms = await asyncio.wait_for(coro, timeout)
        return UrlResult(url=url, kind=kind, ok=True, ms=round(ms, 3))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result, none escapes
        error, detail = classify_error(exc)
        return UrlResult(url=url, kind=kind, ok=False, ms=None, error=error, detail=detail)


async def probe_relay(
    urls: Sequence[IceUrl], *, username: str, password: str, timeout: float, verify_tls: bool = True
) -> RelayReport:
    """Probe every advertised URL of one relay concurrently. Never raises; bounded by `timeout`."""
    steps = []
    stun_targets = [u for u in urls if u.scheme == "stun"]
    if not stun_targets:
        stun_targets = [u for u in urls if u.scheme == "turn" and u.transport == "udp"][:1]
    for u in stun_targets:
        steps.append(
            _timed(
                "stun",
                u.url if u.scheme == "stun" else f"stun:{u.host}:{u.port}",
                stun_binding(u.host, u.port),
                timeout,
            )
        )
    for u in urls:
        if u.is_turn:
            steps.append(
                _timed(
                    "turn",
                    u.url,
                    turn_allocate(u, username, password, verify_tls=verify_tls, timeout=timeout),
                    timeout,
                )
            )
    return RelayReport(results=list(await asyncio.gather(*steps)))
