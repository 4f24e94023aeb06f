"""Daphne as Traverse runs it (signaling/under_daphne.py): its sweeps over every connection run
every few seconds instead of every one or two, and still do their work. A real Daphne process."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import session_cookie
from .test_two_processes import Daphne, Device

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_a_peer_that_stops_answering_pings_is_dropped_and_the_others_stay(
    tmp_path, alice, bob
):
    """Keepalive pings still go out and a peer that stops answering is dropped (its socket leaves
    the process's count), while one that answers stays up."""
    server = Daphne(tmp_path, "web", options=("--ping-interval", "1", "--ping-timeout", "2"))
    try:
        awake = await Device.open(server, await sync_to_async(session_cookie)(alice))
        stalled = await Device.open(server, await sync_to_async(session_cookie)(bob))
        assert server.health()[1]["sockets"] == 2
        stalled.ws.transport.pause_reading()  # its pings pile up unread: no pong goes back
        started = time.monotonic()
        while server.health()[1]["sockets"] != 1:
            assert time.monotonic() - started < 30, "the stalled peer was never dropped"
            await asyncio.sleep(0.25)
        dropped_after = time.monotonic() - started
        # The one that answers pings is still served, after many ping intervals.
        await asyncio.sleep(max(0.0, 12 - dropped_after))
        await awake.send("ping", mid="still-here")
        assert (await awake.recv_type("pong"))["ref"] == "still-here"
        assert server.health()[1]["sockets"] == 1
        stalled.ws.transport.resume_reading()
        await awake.ws.close()
        await stalled.ws.close()
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_the_sweeps_are_thinned_once_and_still_reschedule_themselves():
    from daphne.server import Server
    from twisted.internet import reactor

    from signaling.under_daphne import thin_daphne_sweeps

    original = Server.application_checker, Server.timeout_checker
    try:
        Server._traverse_thinned = False
        thin_daphne_sweeps(application_every=3600, timeouts_every=3600)
        thinned = Server.application_checker, Server.timeout_checker
        thin_daphne_sweeps()  # a second call changes nothing
        assert (Server.application_checker, Server.timeout_checker) == thinned

        server = Server.__new__(Server)
        server.connections = {}
        calls = []
        real_call_later = reactor.callLater
        reactor.callLater = lambda delay, fn, *a: calls.append(delay)  # no reactor here
        try:
            Server.application_checker(server)  # never swept: due, upstream's sweep runs
            Server.timeout_checker(server)  # (each calls itself back, in 1 and 2 s)
            assert calls == [1, 2]
            assert server._traverse_applications_at and server._traverse_timeouts_at
            swept_at = server._traverse_applications_at, server._traverse_timeouts_at
            calls.clear()
            Server.application_checker(server)  # not due for an hour: no sweep,
            Server.timeout_checker(server)  # but still called back in 1 and 2 s
            assert calls == [1, 2]
            assert (server._traverse_applications_at, server._traverse_timeouts_at) == swept_at
        finally:
            reactor.callLater = real_call_later
    finally:
        Server.application_checker, Server.timeout_checker = original
        Server._traverse_thinned = False


EAGER_SERVER = r"""
import json, sys
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import protocol, reactor
if sys.argv[1] == "eager":
    from signaling.under_daphne import eager_tcp_writes
    eager_tcp_writes()
    eager_tcp_writes()  # twice: applied once
queued = [0]
add_writer = reactor.addWriter
def counting_add_writer(writer):
    queued[0] += 1
    add_writer(writer)
reactor.addWriter = counting_add_writer

class Sender(protocol.Protocol):
    def connectionMade(self):
        for i in range(200):  # small frames, as a signaling socket writes them
            self.transport.write(b"small %03d\n" % i)
        self.small = queued[0]
        blob = bytes(range(256)) * 256  # 64 KiB
        for i in range(128):  # 8 MiB: more than the reader's socket takes, so some is queued
            self.transport.write(b"%06d" % i + blob)
        self.transport.write(b"END")
        print(json.dumps({"small": self.small, "all": queued[0]}), flush=True)
        self.transport.loseConnection()  # after what is queued has gone out
    def connectionLost(self, reason):
        reactor.callLater(0, reactor.stop)

port = reactor.listenTCP(0, protocol.Factory.forProtocol(Sender), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


@pytest.mark.parametrize("mode", ["eager", "upstream"])
def test_eager_writes_send_at_once_and_queue_the_rest_in_order(mode):
    """signaling.under_daphne.eager_tcp_writes: a write with nothing queued before it goes out
    at once (no writer registered with the reactor, so no epoll_ctl and no extra loop turn);
    one the socket can't take whole is queued, in order, and a close waits for it. A reader
    with a small receive buffer that starts late makes the sender's socket full."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", EAGER_SERVER, mode],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    try:
        port = int(proc.stdout.readline())
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", port))
        counts = json.loads(proc.stdout.readline())  # written (or queued) before we read any
        received = bytearray()
        while chunk := reader.recv(65536):
            received += chunk
        reader.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    blob = bytes(range(256)) * 256
    expected = b"".join(b"small %03d\n" % i for i in range(200))
    expected += b"".join(b"%06d" % i + blob for i in range(128)) + b"END"
    assert len(received) == len(expected) and received == expected  # whole, in order
    if mode == "eager":
        assert counts["small"] == 0  # the 200 small writes went out at once
        assert counts["all"] >= 1  # the socket filled: the rest was queued
    else:
        assert counts["small"] == 200  # upstream: every write queued, a writer asked for each


# Daphne 4.2.3's Server.create_application, as slim_input_queues mirrors it (asyncio.Queue
# there, SlimQueue here). An upgrade of Daphne that changes it fails here, on purpose.
UPSTREAM_CREATE_APPLICATION = [
    'assert "application_instance" not in self.connections[protocol]',
    "input_queue = asyncio.Queue()",
    'scope.setdefault("asgi", {"version": "3.0"})',
    "application_instance = self.application(",
    "scope=scope,",
    "receive=input_queue.get,",
    "send=partial(self.handle_reply, protocol),",
    ")",
    "if protocol not in self.connections:",
    "return None",
    'self.connections[protocol]["application_instance"] = asyncio.ensure_future(',
    "application_instance,",
    "loop=asyncio.get_event_loop(),",
    ")",
    "return input_queue",
]


def code_lines(function) -> list[str]:
    import inspect

    lines = [line.strip() for line in inspect.getsource(function).splitlines()[1:]]
    in_docstring, out = False, []
    for line in lines:
        if line.startswith('"""'):
            in_docstring = not (in_docstring or line.endswith('"""') and len(line) > 3)
            continue
        if in_docstring or not line or line.startswith("#"):
            continue
        out.append(line.split("  #")[0])
    return out


def test_the_slim_input_queue_mirrors_daphnes_own_create_application():
    from daphne.server import Server

    from signaling.under_daphne import slim_input_queues

    assert code_lines(Server.__dict__["create_application"]) == UPSTREAM_CREATE_APPLICATION or (
        getattr(Server, "_traverse_slim_queues", False)
    )
    slim_input_queues()
    mirrored = code_lines(Server.create_application)
    assert mirrored == [
        "input_queue = SlimQueue(partial(_send_now, self, protocol))"
        if line == "input_queue = asyncio.Queue()"
        else line
        for line in UPSTREAM_CREATE_APPLICATION
    ]


async def test_the_slim_queue_keeps_order_and_loses_nothing_to_a_cancelled_get():
    from signaling.under_daphne import SlimQueue

    q = SlimQueue()
    for i in range(3):
        q.put_nowait(i)
    assert q.qsize() == 3 and [await q.get() for _ in range(3)] == [0, 1, 2] and q.empty()

    # A getter waits, and is handed the next item.
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("a")
    q.put_nowait("b")
    assert await getter == "a" and await q.get() == "b"

    # Cancelled while waiting: nothing taken, and the next getter gets what comes.
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    q.put_nowait("c")
    assert await q.get() == "c"

    # Handed an item, then cancelled before it ran: the item goes back to the front.
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("d")
    q.put_nowait("e")
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert [await q.get(), await q.get()] == ["d", "e"] and q.empty()


async def test_the_slim_queue_hands_items_to_direct_only_while_its_getter_waits_for_one():
    from signaling.under_daphne import SlimQueue

    q = SlimQueue()
    handled: list = []

    def direct(item) -> bool:
        if item.startswith("now"):
            handled.append(item)
            return True
        return False

    q.direct = direct
    q.put_nowait("now-1")  # nobody waits: queued, not handled at once
    assert handled == [] and await q.get() == "now-1"

    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("now-2")  # the getter waits with nothing queued: handled here
    q.put_nowait("later-1")  # not taken: handed to the getter
    q.put_nowait("now-3")  # the getter has an item it hasn't run yet: queued, in order
    assert handled == ["now-2"]
    assert await getter == "later-1" and await q.get() == "now-3" and q.empty()

    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("now-4")
    q.put_nowait("now-5")  # still waiting: each is handled at once
    assert handled == ["now-2", "now-4", "now-5"] and not getter.done()
    getter.cancel()


LEFTOVERS_SERVER = r"""
import gc, json, sys, threading, time
from daphne.server import Server  # installs Twisted's asyncio reactor
from twisted.internet import reactor
if sys.argv[1] == "light":
    from signaling.under_daphne import drop_handshake_leftovers
    drop_handshake_leftovers()

async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})

def held():  # what is still referred to (cycles of garbage aside)
    gc.collect()
    names = ("HTTPChannel", "WebRequest", "Headers")
    kinds = [type(o) for o in gc.get_objects()]
    return {
        n: sum(1 for k in kinds if k.__name__ == n and k.__module__.startswith(("twisted", "daphne")))
        for n in names
    }

out = {}
def client():
    from websockets.sync.client import connect
    for _ in range(100):
        try:
            sockets = [connect(f"ws://127.0.0.1:{sys.argv[2]}/ws/") for _ in range(3)]
            break
        except OSError:
            time.sleep(0.1)
    for i, ws in enumerate(sockets):
        ws.send(f"hello {i}")
        out.setdefault("echo", []).append(ws.recv(timeout=5))
    done = threading.Event()
    def sweep_and_count():  # Daphne's sweep forgets the upgraded HTTP requests; then count
        server.application_checker()
        out.update(held=held())
        done.set()
    reactor.callFromThread(sweep_and_count)
    done.wait(5)
    for i, ws in enumerate(sockets):  # still working after the leftovers went
        ws.send(f"again {i}")
        out["echo"].append(ws.recv(timeout=5))
        ws.close()
    print(json.dumps(out), flush=True)
    reactor.callFromThread(reactor.stop)

threading.Thread(target=client, daemon=True).start()
server = Server(
    application=app,
    endpoints=[f"tcp:port={sys.argv[2]}:interface=127.0.0.1"],
    signal_handlers=False,
)
server.run()
"""


@pytest.mark.parametrize("mode", ["light", "upstream"])
def test_an_open_socket_lets_go_of_its_http_handshake(mode):
    """signaling.under_daphne.drop_handshake_leftovers, in a real Daphne: upstream, each open
    socket keeps the HTTP channel and request it was upgraded from (the transport's producer),
    with their Twisted headers; here none is left, and the sockets still carry frames."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import free_port

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", LEFTOVERS_SERVER, mode, str(free_port())],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["echo"] == [f"hello {i}" for i in range(3)] + [f"again {i}" for i in range(3)]
    if mode == "light":
        assert out["held"] == {"HTTPChannel": 0, "WebRequest": 0, "Headers": 0}
    else:
        assert out["held"]["HTTPChannel"] == 3 and out["held"]["WebRequest"] == 3


# --- fast_websocket_frames ---------------------------------------------------------------------


def masked(text: str | bytes, *, opcode=None, fin: bool = True, mask: bool = True) -> bytes:
    """A client's frame, as websockets (another implementation) writes it."""
    from websockets.frames import Frame, Opcode

    data = text.encode() if isinstance(text, str) else text
    kind = Opcode.TEXT if opcode is None else Opcode(opcode)
    return Frame(kind, data, fin=fin).serialize(mask=mask)


@given(st.lists(st.text(max_size=300), min_size=1, max_size=6), st.data())
@settings(max_examples=300, deadline=None)
def test_the_short_path_reads_what_websockets_writes_and_only_that(texts, data):
    from signaling.under_daphne import _text_frames

    frames = [masked(t) for t in texts]
    wire = b"".join(frames)
    assert _text_frames(wire, 0) == texts
    # Cut inside a frame: not for the short path (autobahn keeps the rest for the next read).
    ends = [sum(len(f) for f in frames[: k + 1]) for k in range(len(frames))]
    cut = data.draw(st.integers(1, len(wire) - 1))
    expected = texts[: ends.index(cut) + 1] if cut in ends else None
    assert _text_frames(wire[:cut], 0) == expected
    # A limit below the longest payload: autobahn's (it closes with 1009).
    longest = max(len(t.encode()) for t in texts)
    if longest > 1:  # a limit of 0 is none
        assert _text_frames(wire, longest - 1) is None
        assert _text_frames(wire, longest) == texts


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(masked(b"\xff\xfe"), id="bad UTF-8"),
        pytest.param(masked("\u00e9".encode()[:1]), id="a cut code point"),
        pytest.param(masked("hi", fin=False), id="a first fragment"),
        pytest.param(masked("hi", mask=False), id="unmasked"),
        pytest.param(masked(b"\x00\x01", opcode=2), id="binary"),
        pytest.param(masked(b"", opcode=9), id="ping"),
        pytest.param(masked("ok") + masked(b"", opcode=9), id="text then ping"),
        pytest.param(b"\x81\xfe\x00\x05abcdhello", id="a short length in 16 bits"),
        pytest.param(masked("x" * 70_000), id="a 64-bit length"),
        pytest.param(b"\xc1\x82abcdhi", id="an RSV bit"),
    ],
)
def test_anything_else_goes_to_autobahn(wire):
    from signaling.under_daphne import _text_frames

    assert _text_frames(wire, 0) is None


FRAMES_SERVER = r"""
import sys
from daphne.server import Server  # installs Twisted's asyncio reactor
if sys.argv[1] == "fast":
    from signaling.under_daphne import eager_tcp_writes, fast_websocket_frames
    eager_tcp_writes()
    fast_websocket_frames()

async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        text = message.get("text")
        if text == "big":
            text = "b" * 70_000  # past 16-bit lengths: autobahn's frame
        elif text is None:
            text = "bytes:" + message["bytes"].hex()
        await send({"type": "websocket.send", "text": "echo:" + text})
        if text == "binary please":
            await send({"type": "websocket.send", "bytes": b"\x00\x01\x02"})

Server(
    application=app,
    endpoints=[f"tcp:port={sys.argv[2]}:interface=127.0.0.1"],
    signal_handlers=False,
).run()
"""


async def frames_seen(port: int) -> dict:
    """What a client sees for each kind of frame a server may be sent."""
    import websockets
    from websockets.frames import Opcode

    async def connect():
        for _ in range(100):
            try:
                return await websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError("the server did not start")

    async def replies(ws, n):
        got = []
        for _ in range(n):
            got.append(await asyncio.wait_for(ws.recv(), 5))
        return got

    async def closed(ws):
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 1006
        return "open"

    seen: dict = {}
    ws = await connect()
    ws.transport.write(masked("one") + masked("twö") + masked("x" * 200))  # one read, three frames
    seen["three in one read"] = await replies(ws, 3)
    wire, after = masked("split" * 40), masked("after")
    ws.transport.write(wire[:7])
    await asyncio.sleep(0.2)
    ws.transport.write(wire[7:] + after[:3])
    await asyncio.sleep(0.2)
    ws.transport.write(after[3:])
    seen["split across reads"] = await replies(ws, 2)
    pong = await ws.ping(b"p")
    await asyncio.wait_for(pong, 5)
    seen["ping answered"] = True
    await ws.send("binary please")
    seen["binary out"] = await replies(ws, 2)
    await ws.send(b"\x07")
    await ws.send("big")
    seen["binary in, big out"] = [r if len(r) < 100 else len(r) for r in await replies(ws, 2)]
    ws.transport.write(masked("frag", fin=False) + masked("ment", opcode=Opcode.CONT))
    seen["fragmented"] = await replies(ws, 1)
    ws.transport.write(masked(b"\xff\xfe"))
    seen["bad UTF-8"] = await closed(ws)
    ws = await connect()
    ws.transport.write(masked("bare", mask=False))
    seen["unmasked"] = await closed(ws)
    return seen


@pytest.mark.parametrize("mode", ["fast", "upstream"])
def test_the_short_paths_in_a_real_daphne_answer_as_autobahn_does(mode, tmp_path):
    """signaling.under_daphne.fast_websocket_frames in a real Daphne, frames written by hand:
    the same replies, closes and errors with the short paths as without them."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import free_port

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    log = tmp_path / "daphne.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", FRAMES_SERVER, mode, str(port)],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        seen = asyncio.run(frames_seen(port))
    finally:
        proc.terminate()
        proc.wait(10)
    assert seen == {
        "three in one read": ["echo:one", "echo:twö", "echo:" + "x" * 200],
        "split across reads": ["echo:" + "split" * 40, "echo:after"],
        "fragmented": ["echo:fragment"],
        "ping answered": True,
        "binary out": ["echo:binary please", b"\x00\x01\x02"],
        "binary in, big out": ["echo:bytes:07", 70_005],
        # autobahn fails a connection by dropping it (failByDrop): no close frame, 1006.
        "bad UTF-8": 1006,
        "unmasked": 1006,
    }, log.read_text()[-3000:]
