"""Signaling at scale: Traverse's socket beside a bare relay and PeerJS, with one load generator.

    .venv/bin/python benchmarks/signaling.py [--quick] [--only bare,peerjs,traverse1,traverse2]

Servers, each a process of its own, measured with the same generator (this process), in one run:
- `bare`: a `websockets` relay that forwards each frame to the socket named in its `to` (the
  floor for Python);
- `peerjs`: PeerJS server 1.0.2 (npm `peer`, installed into benchmarks/peerjs/ from its lock);
- `traverse1`: Traverse under Daphne, one process; `traverse2`: two Daphne processes (one per
  core) sharing Redis, each pair split across them, so every message crosses processes;
- `uvicorn1`, `uvicorn2`: the same under uvicorn (uvloop, httptools, websockets).
Traverse runs on PostgreSQL (BENCH_DATABASE_URL, default …/traverse_bench) and Redis (REDIS_URL,
default db 7), with its per-socket rate limit raised (the closed loop sends faster than a page).

Scenarios (messages are ~500 B candidates; the id and send time ride in the frame):
- light: 20 sockets, 10 senders × 2 msg/s for 10 s: one-way p50/p99, server CPU per message;
- load: 1,000 sockets, 500 senders × 10 msg/s (5,000 msg/s offered) for 10 s, LOAD_ROUNDS
  times (the round with the median p99 stands for the target): p50/p99, share
  delivered within 5 s, lost, duplicated;
- closed loop: 100 sockets (50 pairs), 10 messages in flight per sender, 5 s: messages/s;
- idle: 5,000 sockets connected (and, for Traverse, joined to their calls): time to get there,
  then 10 s idle: server CPU (% of a core) and memory per socket.

Cross-process transports, bare (no server, no JSON), CPU per message in this process and in
Redis: redis-py pub/sub (the floor), channels-redis `send`/`receive`, channels-redis's pub/sub
layer, and Traverse's path (a Lua step forwards the frame to the process that holds the session;
its subscriber hands it to the owner, which numbers it and keeps it, pipelined).

Results: benchmarks/results/signaling.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PEERJS = ROOT / "benchmarks" / "peerjs"

from benchmarks.soak import make_calls, proc_cpu_ns, proc_cpu_rss, setup_django  # noqa: E402
from dev import platform_commands  # noqa: E402
from tests.conftest import free_port  # noqa: E402

SCENARIOS = frozenset({"transports", "light", "closed_loop", "load", "idle"})
LOAD_ROUNDS = 3
PAD = "x" * 330  # brings a candidate frame to ~500 bytes


# --- the bare relay (a process of its own) -------------------------------------------------
def serve_bare(port: int) -> None:
    import websockets

    sockets: dict[str, object] = {}

    async def handler(ws):
        me = ws.request.path.split("id=", 1)[1]
        sockets[me] = ws
        try:
            async for raw in ws:
                to = json.loads(raw).get("to")
                peer = sockets.get(to)
                if peer is not None:
                    await peer.send(raw)
        finally:
            sockets.pop(me, None)

    async def main() -> None:
        async with websockets.serve(handler, "127.0.0.1", port, ping_interval=None, max_queue=None):
            await asyncio.Future()

    asyncio.run(main())


# --- the three protocols, as the generator speaks them --------------------------------------
class Client:
    """One socket of the generator: knows how to open, address a peer and read a payload."""

    def __init__(self, proto: str, url: str, ident: dict):
        self.proto, self.url, self.ident = proto, url, ident
        self.ws = None
        self.address = ident.get("id", "")
        self.peer = ""

    async def open(self) -> None:
        import websockets

        headers = {}
        if self.proto == "traverse":
            headers = {
                "Origin": self.ident["origin"],
                "Cookie": f"sessionid={self.ident['cookie']}",
            }
        self.ws = await websockets.connect(
            self.url,
            additional_headers=headers,
            max_size=2**20,
            ping_interval=None,
            open_timeout=120,
            close_timeout=2,
            max_queue=None,
        )
        if self.proto == "peerjs":
            assert json.loads(await self.ws.recv())["type"] == "OPEN"
        elif self.proto == "traverse":
            welcome = json.loads(await self.ws.recv())
            assert welcome["type"] == "welcome", welcome
            self.address = welcome["body"]["session"]
            call = self.ident["call"]
            await self.ws.send(json.dumps({"v": 1, "type": "join", "id": "j", "call": call}))
            while True:
                msg = json.loads(await self.ws.recv())
                if msg["type"] == "joined":
                    break
                if msg["type"] == "error":
                    raise RuntimeError(f"join refused: {msg['body']}")

    def frame(self, mid: str) -> str:
        cand = {
            "candidate": f"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host {PAD}",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": mid,
        }
        if self.proto == "traverse":
            return json.dumps(
                {
                    "v": 1,
                    "type": "candidate",
                    "id": mid,
                    "call": self.ident["call"],
                    "body": {"to": self.peer, "candidate": cand},
                }
            )
        if self.proto == "peerjs":
            return json.dumps({"type": "CANDIDATE", "dst": self.peer, "payload": cand})
        return json.dumps({"to": self.peer, "candidate": cand})

    @staticmethod
    def message_id(raw: str) -> str | None:
        msg = json.loads(raw)
        if "body" in msg:
            cand = msg["body"].get("candidate")
            if msg.get("type") == "error":
                return "error:" + msg["body"]["code"]
        elif "payload" in msg:
            cand = msg["payload"]
        else:
            cand = msg.get("candidate")
        return cand.get("usernameFragment") if isinstance(cand, dict) else None


class Tally:
    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.got: dict[str, int] = {}
        self.latency: list[float] = []
        self.errors: dict[str, int] = {}
        self.late = 0

    def received(self, mid: str | None) -> None:
        if mid is None:
            return
        if mid.startswith("error:"):
            self.errors[mid[6:]] = self.errors.get(mid[6:], 0) + 1
            return
        self.got[mid] = self.got.get(mid, 0) + 1
        at = self.sent.get(mid)
        if at is not None and self.got[mid] == 1:
            ms = (time.perf_counter() - at) * 1000
            self.latency.append(ms)
            if ms > 5000:
                self.late += 1

    def summary(self) -> dict:
        lat = sorted(self.latency)
        got = set(self.got)
        return {
            "sent": len(self.sent),
            "delivered": len(got & set(self.sent)),
            "delivered_within_5s": len(lat) - self.late,
            "lost": len(set(self.sent) - got),
            "duplicated": sum(n - 1 for n in self.got.values() if n > 1),
            "errors": self.errors,
            "p50_ms": round(statistics.median(lat), 2) if lat else None,
            "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 2) if lat else None,
        }


async def open_pairs(clients: list[Client], concurrency: int = 50) -> float:
    """Open every socket (at most `concurrency` handshakes at once), then tell each side its
    peer's address. Returns the seconds it took."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(c: Client) -> None:
        async with gate:
            await c.open()

    await asyncio.gather(*(one(c) for c in clients))
    for a, b in zip(clients[::2], clients[1::2], strict=True):
        a.peer, b.peer = b.address, a.address
    return time.perf_counter() - started


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.ws.close() for c in clients if c.ws), return_exceptions=True)


async def readers(clients: list[Client], tally: Tally, on_message=None) -> list[asyncio.Task]:
    async def read(c: Client) -> None:
        try:
            async for raw in c.ws:
                mid = Client.message_id(raw)
                tally.received(mid)
                if on_message is not None:
                    on_message(c, mid)
        except Exception:  # noqa: S110 (closed at the end of the scenario)
            pass

    return [asyncio.create_task(read(c)) for c in clients]


async def paced(clients: list[Client], tally: Tally, senders: int, rate: float, seconds: float):
    """`senders` sockets (one side of as many pairs) each send `rate` msg/s for `seconds`."""
    chosen = clients[::2][:senders]

    async def send(i: int, c: Client) -> None:
        await asyncio.sleep(i / senders / rate)  # spread evenly
        n, start = 0, time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            mid = f"{i}-{n}"
            tally.sent[mid] = time.perf_counter()
            await c.ws.send(c.frame(mid))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            del now

    await asyncio.gather(*(send(i, c) for i, c in enumerate(chosen)))


async def closed_loop(clients: list[Client], tally: Tally, window: int, seconds: float) -> float:
    """Each socket keeps `window` messages in flight to its peer; returns delivered msg/s."""
    slots = {id(c): asyncio.Semaphore(window) for c in clients}
    by_address = {c.address: c for c in clients}
    stop = time.perf_counter() + seconds
    delivered = [0]

    def on_message(c: Client, mid: str | None) -> None:
        if mid and not mid.startswith("error:"):
            delivered[0] += 1
            slots[id(by_address[c.peer])].release()

    tasks = await readers(clients, tally, on_message)

    async def pump(i: int, c: Client) -> None:
        n = 0
        while time.perf_counter() < stop:
            try:
                await asyncio.wait_for(slots[id(c)].acquire(), 1.0)
            except TimeoutError:
                continue
            mid = f"{i}-{n}"
            n += 1
            tally.sent[mid] = time.perf_counter()
            await c.ws.send(c.frame(mid))

    started = time.perf_counter()
    await asyncio.gather(*(pump(i, c) for i, c in enumerate(clients)))
    rate = delivered[0] / (time.perf_counter() - started)
    await asyncio.sleep(2)
    for t in tasks:
        t.cancel()
    return rate


def redis_cpu() -> float:
    import redis

    info = redis.Redis.from_url(os.environ["REDIS_URL"]).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Server:
    """The server processes of one target, with their CPU and memory."""

    def __init__(self, name: str, argvs: list[list[str]], ports: list[int], env=None):
        self.name, self.ports = name, ports
        self.log = open(RESULTS / f"signaling-{name}.log.tmp", "w")
        self.procs = [
            subprocess.Popen(a, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
            for a in argvs
        ]
        deadline = time.monotonic() + 60
        for port in ports:
            while True:
                try:
                    import socket

                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                        raise RuntimeError(f"{name} did not start; see {self.log.name}") from None
                    time.sleep(0.2)

    def cpu(self) -> float:
        """Seconds on CPU, to the microsecond (see proc_cpu_ns)."""
        return sum(proc_cpu_ns(p.pid) for p in self.procs) / 1e9

    def rss(self) -> int:
        return sum(proc_cpu_rss(p.pid)[1] for p in self.procs)

    async def settle(self, quiet_pct: float = 3.0, longest: float = 120.0) -> None:
        """Wait until the server is idle (under `quiet_pct` of a core for a second): a started
        process reaps dead processes' entries, and sockets that closed are recorded, before
        anything is measured."""
        deadline = time.monotonic() + longest
        while time.monotonic() < deadline:
            before = self.cpu()
            await asyncio.sleep(1.0)
            if (self.cpu() - before) * 100 < quiet_pct:
                return

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def target_clients(target: str, server: Server, idents: list[dict], n: int) -> list[Client]:
    """n clients (n/2 pairs); for two processes, each pair's sides on different processes."""
    out = []
    for i in range(n):
        port = server.ports[i % len(server.ports)]
        if target == "bare":
            url, ident = f"ws://127.0.0.1:{port}/?id=b{i}", {"id": f"b{i}"}
        elif target == "peerjs":
            tok = secrets.token_hex(4)
            url, ident = (
                f"ws://127.0.0.1:{port}/peerjs?key=peerjs&id=p{i}&token={tok}",
                {"id": f"p{i}"},
            )
        else:
            pair = idents[i // 2]
            url = f"ws://127.0.0.1:{port}/ws/signal/?ice=0"
            ident = {
                "origin": f"http://127.0.0.1:{port}",
                "cookie": pair["cookies"][i % 2],
                "call": pair["call"],
            }
        out.append(Client(target if target in ("bare", "peerjs") else "traverse", url, ident))
    return out


async def run_target(
    target: str, server: Server, idents, quick: bool, scenarios: frozenset[str] = SCENARIOS
) -> dict:
    out: dict = {}
    scale = 0.2 if quick else 1.0

    used = [0]  # Traverse: each scenario its own calls (the last one's drops may still run)

    def fresh_clients(n: int) -> list[Client]:
        clients = target_clients(target, server, idents[used[0] :], n)
        used[0] += n // 2
        return clients

    async def scenario(name: str, n: int, body) -> None:
        if name not in scenarios:
            return
        await server.settle()
        clients = fresh_clients(n)
        connect_s = await open_pairs(clients)
        await server.settle()
        cpu0, r0 = server.cpu(), redis_cpu()
        # The generator's own pauses are not the server's: a full collection of its heap (the
        # tally of every message) stalled it for up to 130 ms, in every target's load run.
        gc.collect()
        gc.disable()
        try:
            result = await body(clients)
        finally:
            gc.enable()
        result["server_cpu_s"] = round(server.cpu() - cpu0, 3)
        result["redis_cpu_s"] = round(redis_cpu() - r0, 3)
        result["connect_seconds"] = round(connect_s, 2)
        await close_all(clients)
        out[name] = result
        print(f"  {target} {name}: {json.dumps(result)}", flush=True)
        await asyncio.sleep(2)

    def paced_scenario(senders, rate: float, drain: float):
        """`senders` sockets (None: one side of every pair) each send `rate` msg/s, then the
        readers get `drain` seconds more."""

        async def body(clients):
            tally = Tally()
            tasks = await readers(clients, tally)
            count = senders if senders is not None else len(clients) // 2
            await paced(clients, tally, count, rate, 10 * scale + 2)
            await asyncio.sleep(drain)
            for t in tasks:
                t.cancel()
            return tally.summary()

        return body

    async def loop(clients):
        tally = Tally()
        rate = await closed_loop(clients, tally, 10, 5 * scale + 1)
        return {**tally.summary(), "msgs_per_s": round(rate)}

    await scenario("light", 20, paced_scenario(10, 2.0, 2))
    await scenario("closed_loop", 100, loop)
    if "load" in scenarios:
        # A tail taken in 12 s on a shared machine moves with its neighbours: each target runs
        # the load LOAD_ROUNDS times, and the round with the median p99 stands for it.
        rounds = []
        for _ in range(LOAD_ROUNDS):
            await scenario("load", int(1000 * (0.5 if quick else 1)), paced_scenario(None, 10, 5))
            rounds.append(out["load"])
        by_p99 = sorted(rounds, key=lambda r: r["p99_ms"] if r["p99_ms"] is not None else 1e9)
        out["load"] = {
            **by_p99[len(by_p99) // 2],
            "lost": sum(r["lost"] for r in rounds),
            "duplicated": sum(r["duplicated"] for r in rounds),
            "p99_ms_rounds": [r["p99_ms"] for r in rounds],
            "rounds": rounds,
        }

    if "idle" not in scenarios:
        return out
    n_idle = int(5000 * (0.2 if quick else 1))
    await server.settle()
    clients = fresh_clients(n_idle)
    rss0 = server.rss()
    connect_s = await open_pairs(clients)
    await server.settle()
    cpu0, t0, rss1 = server.cpu(), time.perf_counter(), server.rss()
    await asyncio.sleep(10)
    cpu_pct = (server.cpu() - cpu0) / (time.perf_counter() - t0) * 100
    out["idle"] = {
        "sockets": n_idle,
        "connect_and_join_seconds": round(connect_s, 1),
        "cpu_pct_of_a_core": round(cpu_pct, 2),
        "memory_kib_per_socket": round((rss1 - rss0) / n_idle / 1024, 1),
    }
    print(f"  {target} idle: {json.dumps(out['idle'])}", flush=True)
    await close_all(clients)
    await asyncio.sleep(3)
    return out


# --- cross-process transports, bare ---------------------------------------------------------
async def transports(n: int) -> dict:
    import redis.asyncio as aioredis

    url = os.environ["REDIS_URL"]
    payload = "x" * 500
    out = {}

    async def measure(name: str, send, recv, setup=None) -> None:
        if setup:
            await setup()
        cpu0, r0, t0 = time.process_time(), redis_cpu(), time.perf_counter()
        got = asyncio.create_task(recv(n))
        for i in range(n):
            await send(i)
        await asyncio.wait_for(got, 60)
        wall = time.perf_counter() - t0
        out[name] = {
            "messages": n,
            "python_cpu_ms_per_msg": round((time.process_time() - cpu0) / n * 1000, 3),
            "redis_cpu_ms_per_msg": round((redis_cpu() - r0) / n * 1000, 3),
            "msgs_per_s": round(n / wall),
        }
        print(f"  transport {name}: {json.dumps(out[name])}", flush=True)

    # redis-py pub/sub: the floor.
    pub, sub = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    ps = sub.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe("bench:floor")

    async def recv_ps(k: int) -> None:
        seen = 0
        while seen < k:
            m = await ps.get_message(timeout=5)
            if m is not None:
                seen += 1

    await measure("redis_pubsub_bare", lambda i: pub.publish("bench:floor", payload), recv_ps)
    await ps.aclose()

    # Traverse: the Lua step that forwards a frame to the process holding the session, that
    # process's subscriber, and its owner numbering and keeping the frame (pipelined).
    from signaling.sessions import (
        close_pipeline,
        delivery_header,
        node_channel,
        parse_forwarded,
        session_forget,
        session_keep,
        session_open,
        session_push,
        session_take_inbox,
    )

    ps = sub.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(node_channel("specific.bench"))
    sessions = [f"s-bench{i}" for i in range(50)]
    for s in sessions:
        await session_open(pub, session=s, user_id=1, channel=f"specific.bench!{s}")
    owner = aioredis.Redis.from_url(url)
    numbered: dict[str, int] = dict.fromkeys(sessions, 0)
    unkept: list = []  # the owner's frames that were not kept (none, or the figure is wrong)

    async def traverse_send(i: int) -> None:
        s = sessions[i % 50]
        await session_push(pub, session=s, text=payload, publish=delivery_header(s, "c", None))

    async def traverse_recv(k: int) -> None:
        seen = 0
        while seen < k:
            m = await ps.get_message(timeout=5)
            if m is None:
                continue
            session, _, _, text = parse_forwarded(m["data"])
            numbered[session] += 1
            session_keep(
                owner,
                session=session,
                channel=f"specific.bench!{session}",
                seq=numbered[session],
                text=text,
                ttl=0,
                unkept=unkept.append,
            )
            seen += 1

    await measure("traverse_forward_and_keep", traverse_send, traverse_recv)
    await session_take_inbox(owner, session=sessions[0])  # the replies still owed: read
    out["traverse_forward_and_keep"]["not_kept"] = len(unkept)
    await ps.aclose()
    await close_pipeline(owner)
    await owner.aclose()
    for s in sessions:
        await session_forget(pub, session=s)

    # channels-redis: the channel layer's send/receive, and its pub/sub layer.
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    for name, layer in (
        ("channels_redis_send", RedisChannelLayer(hosts=[url], capacity=100_000)),
        ("channels_redis_pubsub", RedisPubSubChannelLayer(hosts=[url])),
    ):
        channel = await layer.new_channel()

        async def recv_layer(k: int, layer=layer, channel=channel) -> None:
            for _ in range(k):
                await layer.receive(channel)

        async def send_layer(i: int, layer=layer, channel=channel) -> None:
            await layer.send(channel, {"type": "x", "text": payload})

        await measure(name, send_layer, recv_layer)
        if hasattr(layer, "flush"):
            await layer.flush()
    await pub.aclose()
    await sub.aclose()
    return out


def reset_calls(idents: list[dict]) -> None:
    """The previous target's server was stopped with its sockets in the calls: they are
    `reconnecting` now (as the reaper would make them), so this target's sockets can join."""
    from django.utils import timezone

    from calls.models import Participant, ParticipantState

    Participant.objects.filter(
        call_id__in=[i["call"] for i in idents], state=ParticipantState.JOINED
    ).update(state=ParticipantState.RECONNECTING, reconnecting_since=timezone.now())


def uvicorn_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--ws",
        "websockets",
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def peerjs_command(port: int) -> list[str]:
    if not (PEERJS / "node_modules" / "peer").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEERJS, check=True)
    return [
        "node",
        str(PEERJS / "node_modules/peer/dist/bin/peerjs.js"),
        "--port",
        str(port),
        "--concurrent_limit",
        "20000",
        "--alive_timeout",
        "600000",
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller and shorter (a smoke run)")
    ap.add_argument("--only", default="bare,peerjs,traverse1,uvicorn1,traverse2,uvicorn2")
    ap.add_argument(
        "--scenarios",
        default=",".join(sorted(SCENARIOS)),
        help="a subset of "
        + ",".join(sorted(SCENARIOS))
        + " (printed; only a run of them all writes the results files)",
    )
    ap.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    scenarios = frozenset(args.scenarios.split(","))
    if not scenarios <= SCENARIOS:
        ap.error(f"unknown scenarios: {', '.join(sorted(scenarios - SCENARIOS))}")
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    setup_django()
    targets = args.only.split(",")
    pairs = 10 + 50 + LOAD_ROUNDS * (250 if args.quick else 500) + (500 if args.quick else 2500)
    pairs += 10
    idents = make_calls(pairs) if any(t[-1].isdigit() for t in targets) else []
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "quick": args.quick,
        "targets": {},
    }
    if "transports" in scenarios:
        print("cross-process transports, bare:", flush=True)
        results["transports"] = asyncio.run(transports(2000 if args.quick else 10000))

    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SIGNALING_RATE_PER_SECOND": "100000",
        "SIGNALING_RATE_BURST": "100000",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    for target in targets:
        print(f"{target}:", flush=True)
        if target == "bare":
            port = free_port()
            server = Server(target, [[sys.executable, __file__, "--serve-bare", str(port)]], [port])
        elif target == "peerjs":
            port = free_port()
            server = Server(target, [peerjs_command(port)], [port])
        else:
            n = int(target[-1])
            ports = [free_port() for _ in range(n)]
            argvs = [
                uvicorn_command(p)
                if target.startswith("uvicorn")
                else platform_commands(
                    python=sys.executable, port=p, concurrency=1, beat_schedule=RESULTS / "unused"
                )["web"]
                for p in ports
            ]
            reset_calls(idents)
            server = Server(target, argvs, ports, env=env)
        try:
            results["targets"][target] = asyncio.run(
                run_target(target, server, idents, args.quick, scenarios)
            )
        finally:
            server.stop()
            Path(server.log.name).unlink(missing_ok=True)
    if scenarios != SCENARIOS:
        return 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "signaling.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "signaling.md").write_text(markdown(results))
    print((RESULTS / "signaling.md").read_text())
    return 0


def markdown(r: dict) -> str:
    t = r["targets"]
    names = [
        n for n in ("bare", "peerjs", "traverse1", "uvicorn1", "traverse2", "uvicorn2") if n in t
    ]

    def cell(name, scen, key, fmt="{}"):
        v = t[name].get(scen, {}).get(key)
        return "–" if v is None else fmt.format(v)

    def cpu_per_msg(name, scen):
        s = t[name][scen]
        n = max(1, s["delivered"])
        own = s["server_cpu_s"] / n * 1000
        redis_ms = s["redis_cpu_s"] / n * 1000 if name[-1].isdigit() else 0
        return f"{own:.2f} (+{redis_ms:.2f} Redis)" if redis_ms else f"{own:.2f}"

    lines = [
        "# Signaling at scale",
        "",
        f"Machine: {r['machine']['cpus']} cores, Python {r['machine']['python']}."
        + (" Quick run (smaller, shorter)." if r["quick"] else ""),
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| server CPU ms per relayed message, light (20 msg/s) | "
        + " | ".join(cpu_per_msg(n, "light") for n in names)
        + " |",
        "| p50 / p99 ms, 20 sockets, 10 senders × 2 msg/s | "
        + " | ".join(f"{cell(n, 'light', 'p50_ms')} / {cell(n, 'light', 'p99_ms')}" for n in names)
        + " |",
        f"| p50 / p99 ms, 1,000 sockets, 500 senders × 10 msg/s (the median p99 of {LOAD_ROUNDS} "
        "rounds; each round's p99) | "
        + " | ".join(
            f"{cell(n, 'load', 'p50_ms')} / {cell(n, 'load', 'p99_ms')} "
            f"({', '.join(str(v) for v in t[n].get('load', {}).get('p99_ms_rounds', []))})"
            for n in names
        )
        + " |",
        "| load: delivered within 5 s of sent | "
        + " | ".join(
            f"{cell(n, 'load', 'delivered_within_5s')} of {cell(n, 'load', 'sent')}" for n in names
        )
        + " |",
        "| server CPU ms per message under load | "
        + " | ".join(cpu_per_msg(n, "load") for n in names)
        + " |",
        "| closed loop msg/s, 100 sockets, 10 in flight | "
        + " | ".join(cell(n, "closed_loop", "msgs_per_s") for n in names)
        + " |",
        "| not delivered when the run ended (lost, or still queued) / duplicated | "
        + " | ".join(
            f"{sum(t[n][s]['lost'] for s in ('light', 'load', 'closed_loop'))} / "
            f"{sum(t[n][s]['duplicated'] for s in ('light', 'load', 'closed_loop'))}"
            for n in names
        )
        + " |",
        "| idle sockets: CPU % of a core / KiB per socket | "
        + " | ".join(
            f"{cell(n, 'idle', 'cpu_pct_of_a_core')} / {cell(n, 'idle', 'memory_kib_per_socket')}"
            for n in names
        )
        + " |",
        "| idle sockets connected (and joined) in | "
        + " | ".join(cell(n, "idle", "connect_and_join_seconds", "{} s") for n in names)
        + " |",
        "",
        "Cross-process transports, bare (CPU ms per message: this process + Redis; msgs/s):",
        "",
        "| transport | Python CPU | Redis CPU | msg/s |",
        "|---|---|---|---|",
    ]
    for name, s in r["transports"].items():
        lines.append(
            f"| {name} | {s['python_cpu_ms_per_msg']} | {s['redis_cpu_ms_per_msg']} | {s['msgs_per_s']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
