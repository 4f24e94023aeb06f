"""Relay probes: plain asyncio around aioice, with no Django in it.

A probe answers "does this relay work right now, on everything it advertises, and is it safe?":

- **per URL**: a STUN Binding on every stun: URL (and on the first UDP turn: URL when the relay
  advertises no stun: URL, for the RTT), a TURN Allocate on every turn:/turns: URL over its own
  transport (UDP, TCP or TLS), then a Refresh with lifetime 0 so probes leave nothing allocated;
- **data plane**: two allocations on the relay; each gives the other permission and a channel,
  then N packets go through the relay and are echoed back (RTT, jitter, loss). Only relay
  addresses are peers, so nothing but the relay itself is ever sent data;
- **safety audit**: CreatePermission only (never data) towards loopback, RFC 1918, link-local,
  CGNAT, ::1 and ::ffff:127.0.0.1. A relay that grants any of them can be used to reach the
  operator's private network (CVE-2020-26262, CVE-2026-27624);
- **credentials**: a credential that expires in a few seconds must be accepted, one that expired a
  minute ago must not; when the normal credential is refused, one valid for a day tells clock skew
  apart from a wrong secret (coturn answers 401 to both).

Every network step is bounded with asyncio.wait_for: aioice retransmits over UDP for 63.5 s
before it gives up on a dead server, and it ignores ICMP port-unreachable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from .ice_urls import IceUrl
from .turn_client import TurnClient

# STUN over UDP: retransmit quickly at first (RFC 8489 starts at 500 ms; a probe wants an answer
# within its timeout, and healthy relays answer within a few milliseconds).
_RETRANSMIT_S = (0.1, 0.2, 0.4, 0.8, 1.6)

# Peers a safe relay must refuse. The audit only asks for permission; it never sends data.
AUDIT_PEERS = (
    "127.0.0.1",  # loopback
    "10.0.0.1",  # RFC 1918
    "172.16.0.1",  # RFC 1918
    "192.168.0.1",  # RFC 1918
    "169.254.169.254",  # link-local: cloud metadata services
    "100.64.0.1",  # carrier-grade NAT
    "::1",  # IPv6 loopback
    "::ffff:127.0.0.1",  # IPv4-mapped loopback (CVE-2026-27624)
)
# Error codes that mean "refused": 403 Forbidden, 443 Peer Address Family Mismatch.
_REFUSALS = {403, 443}


# --- results ------------------------------------------------------------------------------
@dataclass
class UrlResult:
    url: str
    kind: str  # "stun" (Binding) or "turn" (Allocate)
    transport: str  # udp, tcp or tls
    ok: bool
    ms: float | None
    error: str | None = (
        None  # error class: timeout, refused, 401, 403, 437, 486, 508, tls, network…
    )
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataPlaneResult:
    ok: bool
    sent: int = 0
    received: int = 0
    rtt_ms: float | None = None  # median
    jitter_ms: float | None = None  # mean difference between consecutive round trips
    loss: float | None = None  # 0..1
    error: str | None = None
    detail: str = ""
    # The relay refused its own relayed address as a peer because that address is loopback or
    # private: a safe relay must do that, so the data plane could not be measured, not failed.
    not_measurable: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditResult:
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # peer -> error class, neither answer
    error: str | None = None  # the audit could not run (no allocation)

    @property
    def ran(self) -> bool:
        return self.error is None

    @property
    def unsafe(self) -> bool:
        return bool(self.accepted)

    def as_dict(self) -> dict:
        return {**asdict(self), "unsafe": self.unsafe}


@dataclass
class CredentialCheck:
    near_expiry_ok: bool | None = None  # a credential expiring in a few seconds was accepted
    expired_refused: bool | None = None  # a credential that expired a minute ago was refused
    clock_skew: str | None = None  # "relay clock ahead" / "relay clock behind", when detected
    bad_secret: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RelayReport:
    results: list[UrlResult] = field(default_factory=list)
    data_plane: DataPlaneResult | None = None
    audit: AuditResult | None = None
    credentials: CredentialCheck | None = None
    next_secret_ok: bool | None = None  # a probe with the relay's next secret succeeded
    duration_ms: float = 0.0
    deep_timed_out: bool = False  # the data-plane, audit and credential checks ran out of time

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def any_ok(self) -> bool:
        turn = [r for r in self.results if r.kind == "turn"] or self.results
        return any(r.ok for r in turn)

    @property
    def rtt_ms(self) -> float | None:
        """The best STUN Binding round trip, the figure selection ranks by."""
        rtts = [r.ms for r in self.results if r.kind == "stun" and r.ok and r.ms is not None]
        return min(rtts) if rtts else None

    def transports(self) -> dict[str, bool]:
        """Per transport (stun, udp, tcp, tls): did every URL on it work?"""
        out: dict[str, bool] = {}
        for r in self.results:
            key = "stun" if r.kind == "stun" else r.transport
            out[key] = out.get(key, True) and r.ok
        return out

    @property
    def error(self) -> str:
        parts = [
            f"{r.url}: {r.error}{' (' + r.detail + ')' if r.detail else ''}"
            for r in self.results
            if not r.ok
        ]
        if self.credentials and self.credentials.clock_skew:
            parts.append(f"clock skew: {self.credentials.clock_skew}")
        if self.data_plane and not self.data_plane.ok and not self.data_plane.not_measurable:
            parts.append(f"data plane: {self.data_plane.error} {self.data_plane.detail}".strip())
        if self.audit and self.audit.unsafe:
            parts.append(f"UNSAFE: accepts peers {', '.join(self.audit.accepted)}")
        if self.deep_timed_out:
            parts.append("deep checks: timeout")
        return "; ".join(parts)


# --- errors -------------------------------------------------------------------------------
def classify_error(exc: BaseException) -> tuple[str, str]:
    """Turn an exception into (error class, detail) that admins and the CLI can read."""
    if isinstance(exc, stun.TransactionFailed):
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        return str(code), str(reason).rstrip("\x00").strip()
    if isinstance(exc, TimeoutError | stun.TransactionTimeout):
        return "timeout", "no answer within the probe timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "nothing listens on that port"
    if isinstance(exc, ssl.SSLError):
        return "tls", str(exc.reason or exc)
    if isinstance(exc, OSError):
        return "network", os.strerror(exc.errno) if exc.errno else str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, stun.TransactionFailed):
        return exc.response.attributes.get("ERROR-CODE", (None, ""))[0]
    return None


# --- STUN Binding -------------------------------------------------------------------------
class _StunClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future] = {}

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


class _Retransmit:
    """Resend a STUN request on a timer until it is answered: one chained timer callback, not a
    task, because a sweep runs a thousand of these at once."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport, data: bytes, fut: asyncio.Future
    ):
        self.loop, self.transport, self.data, self.fut = loop, transport, data, fut
        self.attempt = 0
        self.handle = loop.call_later(_RETRANSMIT_S[0], self.fire)

    def fire(self) -> None:
        if self.fut.done() or self.transport.is_closing():
            return
        self.transport.sendto(self.data)
        self.attempt += 1
        if self.attempt < len(_RETRANSMIT_S):
            self.handle = self.loop.call_later(_RETRANSMIT_S[self.attempt], self.fire)

    def cancel(self) -> None:
        self.handle.cancel()


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
        transport.sendto(data)
        retransmit = _Retransmit(loop, transport, data, fut)
        try:
            response = await fut
        finally:
            retransmit.cancel()
        rtt = (time.perf_counter() - t0) * 1000
        if response.message_class != stun.Class.RESPONSE:
            raise stun.TransactionFailed(response)
        return rtt
    finally:
        transport.close()


# --- TURN allocations ---------------------------------------------------------------------
class Allocation:
    """One TURN allocation made with aioice's client protocol, and deleted when done."""

    def __init__(
        self, client: TurnClient, transport: asyncio.BaseTransport, relayed: tuple[str, int]
    ):
        self.client = client
        self.transport = transport
        self.relayed = relayed

    @classmethod
    async def open(
        cls,
        target: IceUrl,
        username: str,
        password: str,
        *,
        verify_tls: bool = True,
        lifetime: int = 60,
    ) -> Allocation:
        try:
            return await cls._open(
                target, username, password, verify_tls=verify_tls, lifetime=lifetime
            )
        except stun.TransactionFailed as exc:
            # 437 Allocation Mismatch: the OS gave our new socket a local port that an allocation
            # just deleted still holds on the relay. RFC 8656: retry from another 5-tuple.
            if _error_code(exc) != 437:
                raise
            return await cls._open(
                target, username, password, verify_tls=verify_tls, lifetime=lifetime
            )

    @classmethod
    async def _open(
        cls, target: IceUrl, username: str, password: str, *, verify_tls: bool, lifetime: int
    ) -> Allocation:
        loop = asyncio.get_running_loop()
        server = (target.host, target.port)
        transport: asyncio.BaseTransport
        protocol: TurnClientTcpProtocol | TurnClientUdpProtocol
        if target.transport == "tcp":
            ctx = None
            if target.tls:
                ctx = ssl.create_default_context()
                if not verify_tls:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
            transport, protocol = await loop.create_connection(
                lambda: TurnClientTcpProtocol(
                    server,
                    username=username,
                    password=password,
                    lifetime=lifetime,
                    channel_refresh_time=500,
                ),
                host=target.host,
                port=target.port,
                ssl=ctx,
                server_hostname=target.host if ctx is not None else None,
            )
        else:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: TurnClientUdpProtocol(
                    server,
                    username=username,
                    password=password,
                    lifetime=lifetime,
                    channel_refresh_time=500,
                ),
                remote_addr=server,
            )
        client = TurnClient(protocol)
        try:
            relayed = await client.allocate()
        except BaseException:
            transport.close()
            raise
        return cls(client, transport, relayed)

    async def request(self, method: stun.Method, **attributes) -> stun.Message:
        request = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        for name, value in attributes.items():
            request.attributes[name.replace("_", "-")] = value
        return await self.client.request(request)

    async def close(self, timeout: float) -> None:
        """Refresh with lifetime 0 (delete), then close the socket, whatever happens."""
        try:
            await asyncio.wait_for(self.client.delete(), timeout)
        except (TimeoutError, OSError, stun.TransactionError):
            pass  # the relay frees it when its short lifetime runs out
        finally:
            self.transport.close()


async def turn_allocate(
    target: IceUrl, username: str, password: str, *, verify_tls: bool = True, timeout: float
) -> float:
    """A TURN Allocate, then its deletion; returns the Allocate time in milliseconds. The caller
    bounds the Allocate (every caller wraps this in wait_for); the deletion has its own bound."""
    t0 = time.perf_counter()
    alloc = await Allocation.open(
        target, username, password, verify_tls=verify_tls
    )  # bounded by the caller
    ms = (time.perf_counter() - t0) * 1000
    await alloc.close(timeout)
    return ms


async def _timed(kind: str, url: IceUrl, label: str, coro, timeout: float) -> UrlResult:
    transport = "udp" if kind == "stun" else url.label
    try:
        ms = await asyncio.wait_for(coro, timeout)
        return UrlResult(url=label, kind=kind, transport=transport, ok=True, ms=round(ms, 3))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result, none escapes
        error, detail = classify_error(exc)
        return UrlResult(
            url=label, kind=kind, transport=transport, ok=False, ms=None, error=error, detail=detail
        )


# --- data plane ---------------------------------------------------------------------------
class _Echo(asyncio.DatagramProtocol):
    """The far end: every datagram that arrives through the relay goes back to its sender."""

    def __init__(self) -> None:
        self.allocation: Allocation | None = None
        self.tasks: set[asyncio.Task] = set()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.allocation is not None:
            task = asyncio.ensure_future(self.allocation.client.send(data, addr))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


class _Timer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}
        self.rtts: dict[int, float] = {}
        self.all_back = asyncio.get_running_loop().create_future()
        self.expected = 0

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) < 4:
            return
        (seq,) = struct.unpack("!I", data[:4])
        if seq in self.sent_at and seq not in self.rtts:
            self.rtts[seq] = (time.perf_counter() - self.sent_at[seq]) * 1000
            if len(self.rtts) == self.expected and not self.all_back.done():
                self.all_back.set_result(None)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_private(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local


async def data_plane_probe(
    target: IceUrl,
    username: str,
    password: str,
    *,
    packets: int,
    timeout: float,
    verify_tls: bool = True,
) -> DataPlaneResult:
    """Two allocations on the relay echo `packets` packets to each other through channels."""
    a = b = None
    try:
        opened = await asyncio.wait_for(
            asyncio.gather(
                Allocation.open(target, username, password, verify_tls=verify_tls),
                Allocation.open(target, username, password, verify_tls=verify_tls),
                return_exceptions=True,  # so that one failing can't leak the other
            ),
            timeout,
        )
        a, b = (x if isinstance(x, Allocation) else None for x in opened)
        for x in opened:
            if isinstance(x, BaseException):
                raise x
        assert a is not None and b is not None
        timer, echo = _Timer(), _Echo()
        a.client.set_receiver(timer)
        b.client.set_receiver(echo)
        echo.allocation = b
        try:
            # Each side needs a permission for the other before data flows; ChannelBind makes one.
            await asyncio.wait_for(
                asyncio.gather(
                    a.client.bind_channel(0x4000, b.relayed),
                    b.client.bind_channel(0x4000, a.relayed),
                ),
                timeout,
            )
        except stun.TransactionFailed as exc:
            error, detail = classify_error(exc)
            if _error_code(exc) == 403 and _is_private(a.relayed[0]):
                return DataPlaneResult(
                    ok=False,
                    error=error,
                    not_measurable=True,
                    detail=f"the relay refuses its own relayed address {a.relayed[0]} as a peer (a safe relay must)",
                )
            return DataPlaneResult(ok=False, error=error, detail=detail)
        a.client.use_channel(0x4000, b.relayed)
        b.client.use_channel(0x4000, a.relayed)
        timer.expected = packets
        payload = b"traverse-probe".ljust(60, b".")
        for seq in range(packets):
            timer.sent_at[seq] = time.perf_counter()
            await a.client.send(struct.pack("!I", seq) + payload, b.relayed)
            await asyncio.sleep(0.005)
        try:
            await asyncio.wait_for(asyncio.shield(timer.all_back), min(1.0, timeout))
        except TimeoutError:
            pass
        rtts = [timer.rtts[s] for s in sorted(timer.rtts)]
        received = len(rtts)
        loss = 1 - received / packets
        jitter = (
            statistics.fmean(abs(x - y) for x, y in zip(rtts, rtts[1:], strict=False))
            if received > 1
            else None
        )
        return DataPlaneResult(
            ok=received > 0,
            sent=packets,
            received=received,
            rtt_ms=round(statistics.median(rtts), 3) if rtts else None,
            jitter_ms=round(jitter, 3) if jitter is not None else None,
            loss=round(loss, 4),
            error=None if received else "timeout",
            detail="" if received else "no packet came back through the relay",
        )
    except Exception as exc:  # noqa: BLE001
        error, detail = classify_error(exc)
        return DataPlaneResult(ok=False, error=error, detail=detail)
    finally:
        await asyncio.gather(*(x.close(min(1.0, timeout)) for x in (a, b) if x is not None))


# --- safety audit -------------------------------------------------------------------------
async def safety_audit(
    target: IceUrl,
    username: str,
    password: str,
    *,
    timeout: float,
    verify_tls: bool = True,
    peers: Sequence[str] = AUDIT_PEERS,
) -> AuditResult:
    """Ask for permission (CreatePermission only, never data) towards every private peer."""
    result = AuditResult()
    try:
        alloc = await asyncio.wait_for(
            Allocation.open(target, username, password, verify_tls=verify_tls), timeout
        )
    except Exception as exc:  # noqa: BLE001
        result.error = classify_error(exc)[0]
        return result
    try:
        # The requests are independent: all of them in one round trip, bounded together.
        answers = await asyncio.gather(
            *(
                asyncio.wait_for(
                    alloc.request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=(peer, 9)),
                    timeout,
                )
                for peer in peers
            ),
            return_exceptions=True,
        )
        for peer, answer in zip(peers, answers, strict=True):
            if not isinstance(answer, BaseException):
                result.accepted.append(peer)
            elif _error_code(answer) in _REFUSALS:
                result.refused.append(peer)
            else:
                result.errors[peer] = classify_error(answer)[0]
    finally:
        await alloc.close(timeout)
    return result


# --- credentials --------------------------------------------------------------------------
async def _allocates(
    target: IceUrl, creds: tuple[str, str], timeout: float, verify_tls: bool
) -> bool | None:
    """True when the relay accepts the credential, False on 401, None when it can't tell."""
    try:
        await asyncio.wait_for(
            turn_allocate(target, *creds, verify_tls=verify_tls, timeout=timeout), timeout
        )
        return True
    except Exception as exc:  # noqa: BLE001
        return False if _error_code(exc) == 401 else None


# --- the whole probe ----------------------------------------------------------------------
CredentialFactory = Callable[[int], tuple[str, str]]  # expires_at (unix) -> (username, password)


@dataclass
class ProbePlan:
    urls: Sequence[IceUrl]
    credentials: CredentialFactory  # with the relay's current secret
    timeout: float
    verify_tls: bool = True
    packets: int = 10  # data plane; 0 skips it
    audit: bool = True
    check_credentials: bool = True
    next_credentials: CredentialFactory | None = (
        None  # with the relay's next secret, during rotation
    )
    credential_ttl: int = 120


async def probe_relay(plan: ProbePlan) -> RelayReport:
    """Probe one relay. Never raises; each step is bounded by the plan's timeout, and the steps
    that don't depend on each other run concurrently."""
    t0 = time.perf_counter()
    now = int(time.time())
    creds = plan.credentials(now + plan.credential_ttl)
    turn_urls = [u for u in plan.urls if u.is_turn]
    stun_targets = [u for u in plan.urls if u.scheme == "stun"] or [
        u for u in turn_urls if u.scheme == "turn" and u.transport == "udp"
    ][:1]
    # The deep checks use one TURN URL: plain UDP where advertised, else the first one.
    main = next(
        (u for u in turn_urls if u.scheme == "turn" and u.transport == "udp"),
        turn_urls[0] if turn_urls else None,
    )

    steps = [
        _timed(
            "stun",
            u,
            u.stun_url or u.url,
            stun_binding(u.host, u.port),
            plan.timeout,
        )
        for u in stun_targets
    ]
    steps += [
        _timed(
            "turn",
            u,
            u.url,
            turn_allocate(u, *creds, verify_tls=plan.verify_tls, timeout=plan.timeout),
            plan.timeout,
        )
        for u in turn_urls
    ]
    report = RelayReport()

    async def deep() -> None:
        if main is None:
            return
        jobs: list = []
        if plan.packets:
            jobs.append(
                data_plane_probe(
                    main,
                    *creds,
                    packets=plan.packets,
                    timeout=plan.timeout,
                    verify_tls=plan.verify_tls,
                )
            )
        if plan.audit:
            jobs.append(
                safety_audit(main, *creds, timeout=plan.timeout, verify_tls=plan.verify_tls)
            )
        if plan.check_credentials:
            jobs.append(_allocates(main, plan.credentials(now + 5), plan.timeout, plan.verify_tls))
            jobs.append(_allocates(main, plan.credentials(now - 60), plan.timeout, plan.verify_tls))
        if plan.next_credentials is not None:
            jobs.append(
                _allocates(
                    main,
                    plan.next_credentials(now + plan.credential_ttl),
                    plan.timeout,
                    plan.verify_tls,
                )
            )
        done = list(await asyncio.gather(*jobs))
        if plan.packets:
            report.data_plane = done.pop(0)
        if plan.audit:
            report.audit = done.pop(0)
        if plan.check_credentials:
            near, expired = done.pop(0), done.pop(0)
            report.credentials = CredentialCheck(
                near_expiry_ok=near, expired_refused=None if expired is None else not expired
            )
        if plan.next_credentials is not None:
            report.next_secret_ok = bool(done.pop(0))

    async def bounded_deep() -> None:
        # Each deep step is bounded, but a relay that dies half-way through could chain them:
        # the whole set gets twice the probe timeout, so one relay can't hold up a sweep.
        try:
            await asyncio.wait_for(deep(), 2 * plan.timeout)
        except TimeoutError:
            report.deep_timed_out = True

    gathered = await asyncio.gather(asyncio.gather(*steps), bounded_deep())
    report.results = list(gathered[0])

    # coturn answers 401 both to a wrong secret and to a clock that disagrees with ours. A
    # credential valid for a day still passes on a relay whose clock is ahead (but not on a
    # wrong secret), so try one before calling it a bad secret.
    if plan.check_credentials and main is not None:
        check = report.credentials or CredentialCheck()
        main_result = next((r for r in report.results if r.url == main.url), None)
        if main_result is not None and main_result.error == "401":
            day = await _allocates(
                main, plan.credentials(now + 86400), plan.timeout, plan.verify_tls
            )
            if day:
                check.clock_skew = "relay clock ahead: it takes fresh credentials for expired ones"
            else:
                check.bad_secret = True
        elif check.near_expiry_ok is False:
            check.clock_skew = (
                "relay clock ahead: it refuses a credential that is still valid for 5 s"
            )
        elif check.expired_refused is False:
            check.clock_skew = "relay clock behind: it accepts a credential that expired 60 s ago"
        report.credentials = check
    report.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
    return report
