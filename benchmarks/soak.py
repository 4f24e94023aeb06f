"""Soak: 200 signaling sockets in 100 calls, held for 10 minutes, through a real Daphne.

    .venv/bin/python benchmarks/soak.py [--pairs 100] [--seconds 600] [--every 10] [--baseline-seconds 60]

Each pair of sockets (caller and callee of one call) joins its call, then each side sends a
candidate-sized message to the other every `--every` seconds (staggered), for `--seconds`. The
rest of the time the sockets are idle: the 5-second drop this guards against killed idle sockets.
Counted: sockets closed by the server, reconnects (a closed socket reconnects and joins with
resume), messages sent and not received, and delivery latency. Goal: 0 closes, 0 reconnects,
0 lost.

Baseline in the same run: the same clients and schedule against a bare `websockets` relay server
in this process (no Django, no Redis, no database): the floor for closes, loss and latency on
this machine. The Daphne process's CPU time and memory over the hold are measured too.

Uses PostgreSQL at BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/traverse_bench,
created when missing) and Redis at REDIS_URL (default redis://127.0.0.1:6379/7). Results go to
benchmarks/results/soak.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from dev import platform_commands  # noqa: E402 - Daphne as the run command starts it
from tests.conftest import free_port, wait_until_serving  # noqa: E402


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-" + uuid.uuid4().hex)
    os.environ["DATABASE_URL"] = os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/traverse_bench"
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/7")
    os.environ["RATELIMIT_ENABLE"] = "false"  # 100 calls from one script, in a second
    import django

    django.setup()
    from django.db import connection

    if connection.vendor == "postgresql":
        import psycopg

        s = connection.settings_dict
        with psycopg.connect(
            host=s["HOST"] or "127.0.0.1",
            port=s["PORT"] or 5432,
            user=s["USER"],
            dbname="postgres",
            autocommit=True,
        ) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [s["NAME"]]
            ).fetchone()
            if not exists:
                admin.execute(f'CREATE DATABASE "{s["NAME"]}"')
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def make_calls(pairs: int) -> list[dict]:
    """Users, calls and session cookies: one dict per call."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from accounts.models import User
    from calls.services import call_start

    run = uuid.uuid4().hex[:6]

    def user(name: str) -> tuple[User, str]:
        u = User.objects.create_user(f"{name}-{run}", password=None)
        session = SessionStore()
        session[SESSION_KEY] = str(u.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        session[HASH_SESSION_KEY] = u.get_session_auth_hash()
        session.create()
        return u, session.session_key

    calls = []
    for i in range(pairs):
        a, ka = user(f"caller{i}")
        b, kb = user(f"callee{i}")
        call = call_start(caller=a, callee=b)
        calls.append({"call": str(call.id), "cookies": [ka, kb]})
    return calls


class Counters:
    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.received: set[str] = set()
        self.latencies: list[float] = []
        self.closes = 0
        self.reconnects = 0
        self.errors: list[str] = []


async def run_pair(
    url: str,
    origin: str,
    pair: dict,
    c: Counters,
    seconds: float,
    every: float,
    offset: float,
    protocol: str,
) -> None:
    import websockets

    async def open_socket(side: int, resume: bool):
        headers = {"Origin": origin}
        if pair["cookies"][side]:
            headers["Cookie"] = f"sessionid={pair['cookies'][side]}"
        ws = await websockets.connect(
            url, additional_headers=headers, max_size=2**20, ping_interval=None, open_timeout=30
        )
        if protocol == "traverse":
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
            await ws.send(
                json.dumps(
                    {
                        "v": 1,
                        "type": "join",
                        "id": "j",
                        "call": pair["call"],
                        "body": {"resume": resume},
                    }
                )
            )
            while json.loads(await ws.recv())["type"] != "joined":
                pass
        else:
            await ws.send(json.dumps({"pair": pair["call"], "side": side}))
        return ws

    sockets = [await open_socket(0, False), await open_socket(1, False)]
    stop_at = time.monotonic() + seconds

    async def reader(side: int) -> None:
        while time.monotonic() < stop_at + 5:
            try:
                raw = await asyncio.wait_for(
                    sockets[side].recv(), timeout=max(0.1, stop_at + 5 - time.monotonic())
                )
            except TimeoutError:
                return
            except Exception:
                if time.monotonic() >= stop_at:
                    return
                c.closes += 1
                c.reconnects += 1
                sockets[side] = await open_socket(side, True)
                continue
            msg = json.loads(raw)
            cand = (msg.get("body") or {}).get("candidate") if protocol == "traverse" else msg
            if isinstance(cand, dict) and "usernameFragment" in cand:
                # (the message id rides in usernameFragment: the server passes only
                # RTCIceCandidateInit's own fields through)
                c.received.add(cand["usernameFragment"])
                sent_at = c.sent.get(cand["usernameFragment"])
                if sent_at is not None:
                    c.latencies.append((time.monotonic() - sent_at) * 1000)
            elif msg.get("type") == "error":
                c.errors.append(msg["body"]["code"])

    async def writer(side: int) -> None:
        await asyncio.sleep(offset + side * every / 2)
        n = 0
        while time.monotonic() < stop_at:
            mid = f"{pair['call'][:8]}-{side}-{n}"
            n += 1
            body = {
                "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
                "sdpMid": "0",
                "sdpMLineIndex": 0,
                "usernameFragment": mid,
            }
            if protocol == "traverse":
                frame = {
                    "v": 1,
                    "type": "candidate",
                    "id": mid,
                    "call": pair["call"],
                    "body": {"candidate": body},
                }
            else:
                frame = body
            c.sent[mid] = time.monotonic()
            try:
                await sockets[side].send(json.dumps(frame))
            except Exception:
                c.sent.pop(mid, None)  # the reader reconnects; this one never left
            await asyncio.sleep(every)

    await asyncio.gather(reader(0), reader(1), writer(0), writer(1))
    for ws in sockets:
        await ws.close()


async def bare_server(port: int) -> asyncio.AbstractServer:
    """The floor: a websockets server that forwards each message to the other side of its pair."""
    import websockets

    peers: dict[tuple[str, int], object] = {}

    async def handler(ws):
        hello = json.loads(await ws.recv())
        me = (hello["pair"], hello["side"])
        peers[me] = ws
        async for raw in ws:
            other = peers.get((me[0], 1 - me[1]))
            if other is not None:
                await other.send(raw)

    return await websockets.serve(handler, "127.0.0.1", port, ping_interval=None)


async def soak(
    url: str, origin: str, calls: list[dict], seconds: float, every: float, protocol: str
) -> Counters:
    c = Counters()
    spread = every / max(1, len(calls))
    await asyncio.gather(
        *(
            run_pair(url, origin, pair, c, seconds, every, i * spread, protocol)
            for i, pair in enumerate(calls)
        )
    )
    return c


def proc_cpu_ns(pid: int) -> int:
    """On-CPU time of a process's threads in nanoseconds (the scheduler's own count,
    /proc/<pid>/task/*/schedstat). /proc/<pid>/stat counts in clock ticks (10 ms), which is
    too coarse for the ~0.1 s a light-load window costs. Threads that ended are not counted:
    measure windows in which the server keeps its threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # the thread just ended
            continue
    return total


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss_pages = int(fields[21])
    return (int(fields[11]) + int(fields[12])) / ticks, rss_pages * os.sysconf("SC_PAGE_SIZE")


def summary(c: Counters, seconds: float) -> dict:
    lost = len(set(c.sent) - c.received)
    lat = sorted(c.latencies)
    return {
        "held_seconds": seconds,
        "messages_sent": len(c.sent),
        "messages_lost": lost,
        "closes": c.closes,
        "reconnects": c.reconnects,
        "errors": sorted(set(c.errors)),
        "latency_ms_p50": round(statistics.median(lat), 2) if lat else None,
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 2) if lat else None,
        "latency_ms_max": round(lat[-1], 2) if lat else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--baseline-seconds", type=float, default=60)
    args = ap.parse_args()
    setup_django()
    calls = make_calls(args.pairs)

    # Baseline: the bare relay, same clients, same schedule.
    port = free_port()

    async def baseline() -> Counters:
        server = await bare_server(port)
        try:
            return await soak(
                f"ws://127.0.0.1:{port}/",
                f"http://127.0.0.1:{port}",
                [{**p, "cookies": [None, None]} for p in calls],
                args.baseline_seconds,
                args.every,
                "bare",
            )
        finally:
            server.close()

    print(
        f"baseline: bare websockets relay, {args.pairs * 2} sockets, {args.baseline_seconds:.0f} s",
        flush=True,
    )
    base = summary(asyncio.run(baseline()), args.baseline_seconds)

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = open(RESULTS / "soak-daphne.log.tmp", "w")
    web = platform_commands(
        python=sys.executable, port=port, concurrency=1, beat_schedule=RESULTS / "unused"
    )["web"]
    daphne = subprocess.Popen(
        web,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/accounts/login/", daphne, Path(log.name))
        print(
            f"traverse: Daphne, {args.pairs * 2} sockets in {args.pairs} calls, {args.seconds:.0f} s",
            flush=True,
        )
        cpu0, _ = proc_cpu_rss(daphne.pid)
        t0 = time.monotonic()
        counters = asyncio.run(
            soak(
                f"ws://127.0.0.1:{port}/ws/signal/?ice=0",
                f"http://127.0.0.1:{port}",
                calls,
                args.seconds,
                args.every,
                "traverse",
            )
        )
        wall = time.monotonic() - t0
        cpu1, rss = proc_cpu_rss(daphne.pid)
    finally:
        daphne.terminate()
        daphne.wait(10)
    result = summary(counters, args.seconds)
    result["daphne_cpu_percent"] = round((cpu1 - cpu0) / wall * 100, 1)
    result["daphne_rss_mib"] = round(rss / 2**20, 1)
    out = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
        "setup": {
            "pairs": args.pairs,
            "sockets": args.pairs * 2,
            "message_every_s": args.every,
            "redis": os.environ["REDIS_URL"],
            "database": "postgresql",
        },
        "baseline_bare_websockets": base,
        "traverse": result,
        "goal": "0 closes, 0 reconnects, 0 lost messages",
        "met": result["closes"] == result["reconnects"] == result["messages_lost"] == 0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = [
        ("held", "s", "held_seconds"),
        ("messages sent", "", "messages_sent"),
        ("messages lost", "", "messages_lost"),
        ("server closes", "", "closes"),
        ("reconnects", "", "reconnects"),
        ("latency p50", "ms", "latency_ms_p50"),
        ("latency p99", "ms", "latency_ms_p99"),
        ("latency max", "ms", "latency_ms_max"),
    ]
    md = [
        f"# Soak: {args.pairs * 2} signaling sockets in {args.pairs} calls",
        "",
        f"One message each way per pair every {args.every:.0f} s; otherwise idle. "
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        "| figure | bare websockets (baseline) | Traverse (Daphne, Redis, PostgreSQL) |",
        "|---|---|---|",
    ]
    for label, unit, key in rows:
        md.append(f"| {label}{f' ({unit})' if unit else ''} | {base[key]} | {result[key]} |")
    md += [
        f"| Daphne CPU | – | {result['daphne_cpu_percent']}% |",
        f"| Daphne RSS | – | {result['daphne_rss_mib']} MiB |",
        "",
        f"Goal: {out['goal']}. Met: {'yes' if out['met'] else 'no'}.",
    ]
    (RESULTS / "soak.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if out["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
