"""Daphne, tuned for a server that mostly holds idle sockets (issue 8). Applied from
config/asgi.py when Daphne serves the app; each measured with benchmarks/signaling.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

# How often Daphne's two sweeps over every connection run. Upstream: the application sweep
# (reap finished consumers; cancel those that outlive application_close_timeout after their
# socket closed) every second, the timeout sweep (send each socket's keepalive ping when it is
# due) every 2 s. At 5,000 idle sockets the two were two thirds of the idle CPU. Every 5 s, the
# pings go out up to 5 s late (every 20-25 s instead of 20), and a finished consumer is reaped
# up to 5 s later. Handshakes are timed by autobahn itself (openHandshakeTimeout).
APPLICATION_SWEEP_SECONDS = 5.0
TIMEOUT_SWEEP_SECONDS = 5.0


def thin_daphne_sweeps(
    application_every: float = APPLICATION_SWEEP_SECONDS,
    timeouts_every: float = TIMEOUT_SWEEP_SECONDS,
) -> None:
    """Run Daphne's sweeps less often. Each still reschedules itself as upstream does (every
    1 and 2 s); the sweep itself runs only once `*_every` seconds have passed."""
    from daphne.server import Server as DaphneServer
    from twisted.internet import reactor as twisted_reactor

    reactor: Any = twisted_reactor  # zope interfaces confuse mypy about `self`
    Server: Any = DaphneServer

    if getattr(Server, "_traverse_thinned", False):
        return
    sweep_applications, sweep_timeouts = Server.application_checker, Server.timeout_checker

    def application_checker(self):
        now, last = time.monotonic(), getattr(self, "_traverse_applications_at", None)
        if last is None or now - last >= application_every:
            self._traverse_applications_at = now
            return sweep_applications(self)  # which calls back in a second
        reactor.callLater(1, self.application_checker)

    def timeout_checker(self):
        now, last = time.monotonic(), getattr(self, "_traverse_timeouts_at", None)
        if last is None or now - last >= timeouts_every:
            self._traverse_timeouts_at = now
            return sweep_timeouts(self)  # which calls back in 2 s
        reactor.callLater(2, self.timeout_checker)

    Server.application_checker = application_checker
    Server.timeout_checker = timeout_checker
    Server._traverse_thinned = True


def _no_highlight(*args, **kwargs) -> str:
    return ""


def quiet_autobahn_debug_arguments() -> None:
    """autobahn builds the arguments of its debug log lines before it knows they are dropped:
    for every frame in and out it looks up a qualified name with `inspect` and colours it with
    click (5% of Daphne's CPU per relayed frame in a profile, issue 8). Traverse logs Daphne
    at WARNING, so those arguments are never shown: make them free."""
    import autobahn.twisted.websocket as twisted_ws
    import autobahn.util
    import autobahn.websocket.protocol as ws_protocol

    autobahn.util._HAS_CLICK = False  # noqa: SLF001 - whatever else autobahn highlights: plain
    for module in (ws_protocol, twisted_ws):
        for name in ("hltype", "hlval", "hlid"):
            if hasattr(module, name):
                setattr(module, name, _no_highlight)


def eager_tcp_writes() -> None:
    """Send what a TCP connection writes at once when nothing is queued before it, as asyncio's
    own transports do. Twisted always queues a write and waits for the socket to be writable:
    two epoll_ctl calls and one more turn of the loop for every frame out, which was more than
    half of Daphne's CPU with 5,000 idle sockets (their keepalive pings) in a profile (issue 8).
    Whatever the socket doesn't take goes to Twisted's queue, in order, the usual way; TLS
    connections, a connection being closed, and an error on send are all left to Twisted."""
    from twisted.internet import tcp

    Connection: Any = tcp.Connection
    if getattr(Connection, "_traverse_eager", False):
        return
    queued_write = Connection.write  # the TLS-aware write of Twisted's connection mixin

    def write(self, data: bytes) -> None:
        if (
            data
            and type(data) is bytes
            and not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            sent = self.writeSomeData(data)
            if isinstance(sent, int) and sent >= 0:
                if sent == len(data):
                    return
                data = data[sent:]
        queued_write(self, data)

    Connection.write = write
    Connection._traverse_eager = True


class SlimQueue:
    """What Daphne's application input queue is asked for (`put_nowait`, `get`), with a list
    and one waiter: asyncio.Queue keeps four deques and an Event, about 2.4 KiB per idle socket
    (tracemalloc, issue 8). Items come out in the order they went in; one getter at a time (the
    consumer's), as Daphne's `receive` has.

    Two more things for the application, which finds the queue as `receive.__self__`:
    - `send_now(message)`: what awaiting the server's `send` does (Daphne's handle_reply: it
      never waits), as a plain call, for a consumer that sends from code that doesn't await;
    - `direct`: the application may set it to a callable that handles an item at once, in the
      server's callback that read it, and says whether it did. It is asked only while the
      application waits in `get` with nothing queued (it has handled everything before this
      item, and is in no handler), so items are still handled one at a time, in order. One
      that it doesn't take is queued as usual. This saves a relayed frame a wake-up of the
      consumer's task: a turn of the loop, a future and the awaits down to the handler (issue
      8: signaling.consumers.SignalConsumer._direct)."""

    __slots__ = ("_items", "_waiter", "direct", "send_now")

    def __init__(self, send_now: Callable[[dict], None] | None = None) -> None:
        self._items: list | None = None
        self._waiter: asyncio.Future | None = None
        self.direct: Callable[[dict], bool] | None = None
        self.send_now = send_now

    def put_nowait(self, item: Any) -> None:
        if self._waiter is not None and self.direct is not None and self.direct(item):
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
        elif self._items is None:
            self._items = [item]
        else:
            self._items.append(item)

    def qsize(self) -> int:
        return len(self._items or ())

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        if self._items:
            item = self._items.pop(0)
            if not self._items:
                self._items = None
            return item
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await waiter
        except asyncio.CancelledError:
            if self._waiter is waiter:
                self._waiter = None
            elif waiter.done() and not waiter.cancelled():  # handed over, then cancelled
                self._items = [waiter.result(), *(self._items or ())]
            raise


def _send_now(server, protocol, message: dict) -> None:
    """Daphne's Server.handle_reply (4.2.3) as a plain call: it never waits. Its check of
    response headers is for HTTP only."""
    connection = server.connections.get(protocol)
    if connection is None or connection.get("disconnected", None):
        return
    protocol.handle_reply(message)


def slim_input_queues() -> None:
    """Daphne's Server.create_application (4.2.3), with a SlimQueue for the input queue.
    tests/signaling/test_daphne_tuning.py checks that upstream's is still the one mirrored."""
    from daphne.server import Server as DaphneServer

    Server: Any = DaphneServer
    if getattr(Server, "_traverse_slim_queues", False):
        return

    def create_application(self, protocol, scope):
        assert "application_instance" not in self.connections[protocol]
        input_queue = SlimQueue(partial(_send_now, self, protocol))
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope,
            receive=input_queue.get,
            send=partial(self.handle_reply, protocol),
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance,
            loop=asyncio.get_event_loop(),
        )
        return input_queue

    Server.create_application = create_application
    Server._traverse_slim_queues = True


def drop_handshake_leftovers() -> None:
    """Once a socket is open, let go of what only its handshake needed. Daphne upgrades an HTTP
    request to a WebSocket on the same TCP transport, whose registered producer stays the HTTP
    channel: that channel, its request, the request's Twisted headers and its buffers lived as
    long as the socket (about 3.3 KiB; tracemalloc, and gc referrers: `transport.producer`).
    autobahn keeps the raw request and its parsed headers too (about 1.8 KiB). Nothing reads
    them after the handshake: Daphne logs `request.path`, which stays; the application has its
    scope. The HTTP channel resumed the transport's reading when it handed it over, so no
    producer is needed (autobahn registers none of its own)."""
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.web.http import HTTPChannel

    Protocol: Any = WebSocketProtocol
    if getattr(Protocol, "_traverse_light", False):
        return
    upstream = Protocol.onOpen

    def onOpen(self):
        upstream(self)
        transport = self.transport
        channel = getattr(transport, "producer", None)
        if isinstance(channel, HTTPChannel):
            transport.unregisterProducer()
            channel.requests = []  # the channel and its request refer to each other
        self.http_request_data = b""
        self.http_headers = {}
        if getattr(self, "request", None) is not None:
            self.request.headers = {}

    Protocol.onOpen = onOpen
    Protocol._traverse_light = True


def _text_frames(data: bytes, max_payload: int) -> list[str] | None:
    """The messages in `data` when it is nothing but whole, unfragmented, masked text frames
    of valid UTF-8, each within `max_payload` (0: no limit), as clients send signaling;
    None for anything else (a control frame, a binary or fragmented message, a frame cut by
    the TCP segment, bad UTF-8, ...), which autobahn then handles as usual."""
    texts = []
    end, i = len(data), 0
    while i < end:
        if end - i < 6 or data[i] != 0x81:  # FIN, no RSV bits, text
            return None
        length = data[i + 1] ^ 0x80  # the mask bit must be set
        i += 2
        if length >= 126:
            if length != 126 or end - i < 6:  # 127 (64-bit lengths) or beyond 65,535: autobahn's
                return None
            length = (data[i] << 8) | data[i + 1]
            if length < 126:  # not the shortest encoding: autobahn fails the connection
                return None
            i += 2
        if (max_payload and length > max_payload) or i + 4 + length > end:
            return None
        mask = data[i : i + 4]
        i += 4
        payload = data[i : i + length]
        i += length
        key = (mask * ((length >> 2) + 1))[:length]
        plain = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
        try:
            texts.append(plain.to_bytes(length, "little").decode("utf-8"))
        except UnicodeDecodeError:
            return None  # autobahn fails the connection with 1007, as it should
    return texts


def fast_websocket_frames() -> None:
    """Daphne's WebSocket protocol, with a short path for the frames signaling is made of:
    whole, masked, unfragmented text frames in, one unfragmented text or binary frame out.
    autobahn parses every frame byte by byte through its state machine, unmasks it with a CFFI
    masker made per frame and validates its UTF-8 incrementally (about 15% of the CPU of a
    relayed frame under load, py-spy, issue 8); it builds each frame out through sendFrame and
    sendData. Here a TCP read that holds only such frames is unmasked with Python's big
    integers and decoded at once, and a message out is one header and one write. Anything
    else (control frames, fragments, a frame split across reads, compression, limits hit,
    a socket not open, autobahn's frame logging) goes through autobahn, untouched.
    tests/signaling/test_daphne_tuning.py holds the two paths to the same results."""
    from autobahn.websocket.protocol import WebSocketProtocol as Autobahn
    from daphne.ws_protocol import WebSocketProtocol

    Protocol: Any = WebSocketProtocol
    if getattr(Protocol, "_traverse_fast_frames", False):
        return
    upstream_received, upstream_send = Protocol._dataReceived, Protocol.sendMessage
    OPEN = Autobahn.STATE_OPEN

    def _dataReceived(self, data: bytes) -> None:
        if (
            self.state == OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message
            and self._perMessageCompress is None
            and not self.logFrames
            and not self.logOctets
            and not self.trackedTimings
            and self.utf8validateIncoming
            and self.requireMaskedClientFrames
        ):
            limit = self.maxMessagePayloadSize
            if self.maxFramePayloadSize and (not limit or self.maxFramePayloadSize < limit):
                limit = self.maxFramePayloadSize
            texts = _text_frames(data, limit)
            if texts is not None:
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()  # as onFrameEnd does for data frames
                if self.muted:
                    return
                self.last_ping = time.time()  # as Daphne's onMessage does
                put = self.application_queue.put_nowait
                for text in texts:
                    put({"type": "websocket.receive", "text": text})
                return
        upstream_received(self, data)

    def sendMessage(
        self, payload, isBinary=False, fragmentSize=None, sync=False, doNotCompress=False
    ):
        n = len(payload)
        if (
            self.state != OPEN
            or type(payload) is not bytes
            or fragmentSize is not None
            or sync
            or self.autoFragmentSize
            or self._perMessageCompress is not None
            or self.logFrames
            or self.logOctets
            or self.trackedTimings
            or self.send_queue
            or (self.maxMessagePayloadSize and n > self.maxMessagePayloadSize)
            or n > 0xFFFF
        ):
            return upstream_send(self, payload, isBinary, fragmentSize, sync, doNotCompress)
        opcode = 0x82 if isBinary else 0x81
        header = bytes((opcode, n)) if n < 126 else bytes((opcode, 126, n >> 8, n & 0xFF))
        self.transport.write(header + payload)

    Protocol._dataReceived = _dataReceived
    Protocol.sendMessage = sendMessage
    Protocol._traverse_fast_frames = True
