"""Several server processes on one Redis: a call across two Daphne processes, one of them
killed mid-call, and a rolling restart (a process that stops sends its sockets elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import websockets
from asgiref.sync import sync_to_async

from calls.models import Participant, ParticipantState
from calls.services import call_start
from dev import platform_commands
from tests.conftest import free_port, wait_until_serving
from tests.e2e.conftest import ROOT, child_env

from .conftest import session_cookie
from .test_signaling import CANDIDATE, OFFER

pytestmark = [pytest.mark.django_db(transaction=True)]


class Daphne:
    def __init__(self, tmp_path, name: str, options: tuple[str, ...] = (), env: dict | None = None):
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        env = {**child_env(), "PRESENCE_TTL_SECONDS": "3", **(env or {})}
        argv = platform_commands(
            python=sys.executable, port=self.port, concurrency=1, beat_schedule=tmp_path / "b"
        )["web"]
        argv = [*argv[:-1], *options, argv[-1]]  # Daphne's options, then the application
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT
        )
        wait_until_serving(f"http://127.0.0.1:{self.port}/healthz", self.proc, self.log)

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=3) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def two(tmp_path):
    procs = [Daphne(tmp_path, "one"), Daphne(tmp_path, "two")]
    yield procs
    for p in procs:
        p.stop()


class Device:
    """A real WebSocket client on one process, speaking the envelope."""

    def __init__(self, ws, welcome):
        self.ws, self.welcome = ws, welcome
        self.session = welcome["body"]["session"]
        self.last_seq = welcome["seq"]

    @classmethod
    async def open(cls, server: Daphne, cookie: str) -> Device:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws/signal/?ice=0",
            additional_headers={
                "Origin": f"http://127.0.0.1:{server.port}",
                "Cookie": f"sessionid={cookie}",
            },
            ping_interval=None,
        )
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        return cls(ws, welcome)

    async def send(self, mtype: str, call=None, body=None, mid: str | None = None) -> None:
        frame = {"v": 1, "type": mtype, "id": mid or f"c-{mtype}", "body": body or {}}
        if call is not None:
            frame["call"] = str(call)
        await self.ws.send(json.dumps(frame))

    async def recv_type(self, mtype: str, timeout: float = 5) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await self.ws.recv())
                if "seq" in msg:
                    self.last_seq = msg["seq"]
                if msg["type"] == mtype:
                    return msg
                assert msg["type"] != "error", msg


async def test_a_call_across_two_processes_survives_one_of_them_dying(two, alice, bob):
    one, other = two
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    a = await Device.open(one, await sync_to_async(session_cookie)(alice))
    bob_cookie = await sync_to_async(session_cookie)(bob)
    b = await Device.open(other, bob_cookie)
    await a.send("join", call.id)
    await a.recv_type("joined")
    await b.send("join", call.id)
    assert (await b.recv_type("joined"))["body"]["peers"][0]["session"] == a.session
    assert (await a.recv_type("peer-joined"))["body"]["session"] == b.session

    # Across the processes, both ways.
    await a.send("offer", call.id, {**OFFER, "to": b.session})
    assert (await b.recv_type("offer"))["body"]["fromSession"] == a.session
    for i in range(20):
        await b.send("candidate", call.id, {**CANDIDATE, "to": a.session}, mid=f"b{i}")
    got = [await a.recv_type("candidate") for _ in range(20)]
    assert [g["body"]["fromSession"] for g in got] == [b.session] * 20
    assert [g["seq"] for g in got] == sorted(g["seq"] for g in got)

    # bob's process dies; what alice sends meanwhile waits for bob's device session.
    other.proc.send_signal(signal.SIGKILL)
    other.proc.wait(5)
    for i in range(3):
        await a.send("candidate", call.id, {**CANDIDATE, "to": b.session}, mid=f"a{i}")
    await asyncio.sleep(0.3)

    b2 = await Device.open(one, bob_cookie)
    await b2.send("resume", body={"session": b.session, "lastSeq": b.last_seq})
    resumed = await b2.recv_type("resumed")
    assert resumed["body"]["calls"] == [str(call.id)]
    for _ in range(resumed["body"]["replayed"]):
        await b2.ws.recv()
    # What alice sent while no process held bob's socket waited for his session, and comes
    # next, numbered after what was replayed.
    waited = [await b2.recv_type("candidate") for _ in range(3)]
    assert [m["body"]["fromSession"] for m in waited] == [a.session] * 3
    assert [m["seq"] for m in waited] == sorted(m["seq"] for m in waited)
    assert waited[0]["seq"] > b.last_seq
    back = await a.recv_type("peer-joined")
    assert back["body"].items() >= {"user": bob.pk, "session": b.session, "resumed": True}.items()

    # The call goes on, now within one process.
    await b2.send("candidate", call.id, {**CANDIDATE, "to": a.session})
    await a.recv_type("candidate")
    await a.send("candidate", call.id, CANDIDATE)
    await b2.recv_type("candidate")
    p = await sync_to_async(Participant.objects.get)(call=call, user=bob)
    assert p.state == ParticipantState.JOINED and p.channel_name.startswith("specific.")
    for d in (a, b2):
        await d.ws.close()


async def test_a_process_that_stops_sends_its_sockets_elsewhere_at_once(two, alice, bob):
    one, other = two
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    alice_cookie = await sync_to_async(session_cookie)(alice)
    a = await Device.open(one, alice_cookie)
    b = await Device.open(other, await sync_to_async(session_cookie)(bob))
    for d in (a, b):
        await d.send("join", call.id)
        await d.recv_type("joined")
    await a.recv_type("peer-joined")
    status, body = one.health()
    assert status == 200 and body["status"] == "ok" and body["sockets"] == 1

    one.proc.send_signal(signal.SIGTERM)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                await a.ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4012

    a2 = await Device.open(other, alice_cookie)
    await a2.send("resume", body={"session": a.session, "lastSeq": a.last_seq})
    assert (await a2.recv_type("resumed"))["body"]["calls"] == [str(call.id)]
    await b.recv_type("peer-joined")
    await b.send("candidate", call.id, CANDIDATE)
    await a2.recv_type("candidate")
    one.proc.wait(10)
    for d in (a2, b):
        with contextlib.suppress(Exception):
            await d.ws.close()
