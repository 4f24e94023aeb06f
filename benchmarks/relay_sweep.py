"""Benchmark: one relay sweep over 1,000 relay endpoints, 10% of them dead.

    .venv/bin/python benchmarks/relay_sweep.py [--relays 1000] [--dead 0.1] [--coturns 8] [--timeout 2]

It starts several real coturn processes on loopback, registers the relays (live ones spread over
the coturn processes, dead ones on ports where nothing listens: half UDP, which time out, half
TCP, which are refused), and runs the platform's own sweep (`relays.services.relay_sweep`), the
code the Celery task runs. It reports:

- the sweep's wall time next to the probe timeout (goal: at most timeout + 1 s);
- CPU time per probe (goal: at most 1 ms), for the probing phase and for the whole sweep;
- database writes per sweep;
- the same for a deep sweep (data-plane echo, safety audit, credential checks), which runs at
  most once per RELAY_DEEP_CHECK_INTERVAL per relay.

Baselines measured in the same run: bare aioice (create_turn_endpoint, then close) on the same
live endpoints, which is the floor for an Allocate in Python; and HMAC-SHA1 operations per
second, which tells how fast this machine is. Results go to benchmarks/results/relay_sweep.json
and .md. The database is a throwaway SQLite file unless BENCH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from tests.conftest import free_port  # noqa: E402 - one way to find a port free for UDP and TCP


def start_coturns(n: int, secret: str, workdir: Path) -> tuple[list[subprocess.Popen], list[int]]:
    from relays.coturn import render_coturn_config

    procs, ports = [], []
    base = 20000
    for i in range(n):
        port = free_port()
        state = workdir / f"coturn-{i}"
        state.mkdir()
        (state / "turnserver.conf").write_text(
            render_coturn_config(
                listen_ip="127.0.0.1",
                port=port,
                secret=secret,
                realm="bench",
                state_dir=str(state),
                min_port=base + i * 600,
                max_port=base + i * 600 + 599,
                log_file=str(state / "turn.log"),
                extra=["no-stdout-log", "total-quota=0", "user-quota=0"],
            )
        )
        procs.append(
            subprocess.Popen(
                ["turnserver", "-c", str(state / "turnserver.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports.append(port)
    for port in ports:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    return procs, ports


def setup_django(workdir: Path) -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only")
    os.environ["DATABASE_URL"] = (
        os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{workdir / 'bench.sqlite3'}"
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # the sweep itself needs no Redis
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection

    return connection.vendor


class WriteCounter:
    def __init__(self) -> None:
        self.writes = 0
        self.statements = 0

    def __call__(self, execute, sql, params, many, context):
        self.statements += 1
        if sql.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.writes += 1
        return execute(sql, params, many, context)


def measured_sweep(*, deep: bool = False, **kwargs) -> dict:
    from django.db import connection

    from relays.services import relay_sweep

    counter = WriteCounter()
    phase: dict[str, float] = {}

    def on_result(relay, report):  # the last probe to finish marks the end of the probing phase
        phase["probes_done_cpu"] = time.process_time()
        phase["probes_done_wall"] = time.perf_counter()

    with connection.execute_wrapper(counter):
        c0, w0 = time.process_time(), time.perf_counter()
        outcomes = relay_sweep(force=True, on_result=on_result, **kwargs)
        c1, w1 = time.process_time(), time.perf_counter()
    n = len(outcomes)
    probes = sum(len(o.report.results) for o in outcomes)
    probe_only = probe_phase_only(
        relay_ids=kwargs.get("relay_ids"), timeout=kwargs["timeout"], deep=deep
    )
    return {
        "relays": n,
        "url_probes": probes,
        "wall_s": round(w1 - w0, 3),
        "probing_wall_s": round(phase["probes_done_wall"] - w0, 3),
        "cpu_s": round(c1 - c0, 3),
        "cpu_ms_per_relay": round((c1 - c0) * 1000 / n, 3),
        "probing_cpu_ms_per_relay": round((phase["probes_done_cpu"] - c0) * 1000 / n, 3),
        "probing_cpu_ms_per_url_probe": round((phase["probes_done_cpu"] - c0) * 1000 / probes, 3),
        # The probes alone (relays already loaded, plans made): the code in relays/probes.py.
        "probe_code_cpu_ms_per_relay": probe_only,
        "db_writes": counter.writes,
        "db_statements": counter.statements,
        "status": {
            s: sum(1 for o in outcomes if o.relay.status == s)
            for s in ("up", "degraded", "down", "unknown")
        },
        "live_relays_failing": [
            f"{o.relay.name}: {o.report.error}"
            for o in outcomes
            if o.relay.name.startswith("live-") and not o.report.ok
        ][:10],
    }


def probe_phase_only(*, relay_ids, timeout: float, deep: bool) -> float:
    from django.utils import timezone

    from relays.models import Relay
    from relays.services import probe_plan, relays_probe

    qs = Relay.objects.filter(enabled=True)
    if relay_ids is not None:
        qs = qs.filter(pk__in=relay_ids)
    if deep:
        qs.update(deep_checked_at=None)
    relays = list(qs)
    now = timezone.now()
    plans = [probe_plan(r, now=now, timeout=timeout) for r in relays]
    c0 = time.process_time()
    asyncio.run(relays_probe(relays, plans))
    return round((time.process_time() - c0) * 1000 / len(relays), 3)


async def bare_aioice(ports: list[int], secret: str, count: int, timeout: float) -> dict:
    """The floor: aioice's own create_turn_endpoint + close on live endpoints, nothing else."""
    from aioice.turn import create_turn_endpoint

    from relays.credentials import turn_rest_pair

    username, password = turn_rest_pair(
        secret=secret, expires_at=int(time.time()) + 120, opaque_id="bench"
    )

    async def one(port: int) -> bool:
        turn, _ = await asyncio.wait_for(
            create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=("127.0.0.1", port),
                username=username,
                password=password,
                lifetime=60,
            ),
            timeout,
        )
        await asyncio.wait_for(turn._close(), timeout)
        return True

    c0, w0 = time.process_time(), time.perf_counter()
    done = await asyncio.gather(
        *(one(ports[i % len(ports)]) for i in range(count)), return_exceptions=True
    )
    c1, w1 = time.process_time(), time.perf_counter()
    ok = sum(1 for d in done if d is True)
    return {
        "allocations": count,
        "ok": ok,
        "wall_s": round(w1 - w0, 3),
        "cpu_ms_per_allocation": round((c1 - c0) * 1000 / count, 3),
    }


def hmac_rate() -> float:
    key, msg = b"k" * 32, b"1767225600:g_abcdefghijklmnop"
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        for _ in range(1000):
            hmac.new(key, msg, hashlib.sha1).digest()
        n += 1000
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relays", type=int, default=1000)
    ap.add_argument("--dead", type=float, default=0.10)
    ap.add_argument("--coturns", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument(
        "--deep-sample", type=int, default=100, help="relays in the deep-sweep measurement"
    )
    args = ap.parse_args()
    if not shutil.which("turnserver"):
        sys.exit("coturn (turnserver) is needed: apt-get install coturn")

    workdir = Path(tempfile.mkdtemp(prefix="traverse-bench-"))
    secret = secrets.token_urlsafe(24)
    procs, ports = start_coturns(args.coturns, secret, workdir)
    try:
        vendor = setup_django(workdir)
        from django.conf import settings
        from django.utils import timezone

        from relays.models import Relay

        Relay.objects.all().delete()  # a BENCH_DATABASE_URL may hold an earlier run's relays
        n_dead = int(args.relays * args.dead)
        relays = []
        for i in range(args.relays - n_dead):
            relays.append(
                Relay(
                    name=f"live-{i}",
                    urls=[f"turn:127.0.0.1:{ports[i % len(ports)]}?transport=udp"],
                    secret=secret,
                )
            )
        for i in range(n_dead):
            transport = "udp" if i % 2 == 0 else "tcp"
            relays.append(
                Relay(
                    name=f"dead-{i}",
                    urls=[f"turn:127.0.0.1:{free_port()}?transport={transport}"],
                    secret=secret,
                )
            )
        Relay.objects.bulk_create(relays)

        baseline = asyncio.run(bare_aioice(ports, secret, args.relays - n_dead, args.timeout))
        # Routine sweep: Binding + Allocate (+ delete) per URL; the deep checks are not due.
        Relay.objects.update(deep_checked_at=timezone.now())
        warm = measured_sweep(timeout=args.timeout)  # warm-up: imports, first connections
        print("warm-up failures:", warm["live_relays_failing"])
        routine = measured_sweep(timeout=args.timeout)
        # Deep sweep on a sample: data-plane echo, safety audit and credential checks as well.
        Relay.objects.update(deep_checked_at=None)
        sample = list(
            Relay.objects.filter(name__startswith="live-").values_list("pk", flat=True)[
                : args.deep_sample
            ]
        )
        deep = measured_sweep(timeout=args.timeout, relay_ids=sample, deep=True)

        result = {
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "hmac_sha1_per_s": round(hmac_rate()),
            },
            "setup": {
                "relays": args.relays,
                "dead": n_dead,
                "coturn_processes": args.coturns,
                "probe_timeout_s": args.timeout,
                "database": vendor,
                "data_plane_packets": settings.RELAY_DATA_PLANE_PACKETS,
            },
            "baseline_bare_aioice": baseline,
            "routine_sweep": routine,
            "deep_sweep_sample": deep,
            "goals": {
                "wall_le_timeout_plus_1s": routine["wall_s"] <= args.timeout + 1,
                "probe_cpu_le_1ms_per_relay": routine["probe_code_cpu_ms_per_relay"] <= 1.0,
                "whole_sweep_cpu_le_1ms_per_relay": routine["cpu_ms_per_relay"] <= 1.0,
            },
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "relay_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "relay_sweep.md").write_text(_markdown(result))
        print(_markdown(result))
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _markdown(r: dict) -> str:
    s, b, d, m, u = (
        r["routine_sweep"],
        r["baseline_bare_aioice"],
        r["deep_sweep_sample"],
        r["machine"],
        r["setup"],
    )
    return f"""# Relay sweep benchmark ({r["measured_at"]})

Machine: {m["platform"]}, {m["cpus"]} CPUs, Python {m["python"]}, load {m["loadavg_1m"]}, {m["hmac_sha1_per_s"]:,} HMAC-SHA1/s.
Setup: {u["relays"]} relays ({u["dead"]} dead: half UDP, half TCP), {u["coturn_processes"]} coturn processes, probe timeout {u["probe_timeout_s"]} s, {u["database"]} database.

| | wall | CPU per relay: probe code | … with loading and planning | … whole sweep | DB writes | statuses |
|---|---|---|---|---|---|---|
| routine sweep, {s["relays"]} relays, {s["url_probes"]} URL probes | {s["wall_s"]} s (probing {s["probing_wall_s"]} s) | {s["probe_code_cpu_ms_per_relay"]} ms | {s["probing_cpu_ms_per_relay"]} ms | {s["cpu_ms_per_relay"]} ms | {s["db_writes"]} ({s["db_statements"]} statements) | {s["status"]} |
| deep sweep, {d["relays"]} relays | {d["wall_s"]} s | {d["probe_code_cpu_ms_per_relay"]} ms | {d["probing_cpu_ms_per_relay"]} ms | {d["cpu_ms_per_relay"]} ms | {d["db_writes"]} | {d["status"]} |
| baseline: bare aioice Allocate + close, {b["allocations"]} | {b["wall_s"]} s | {b["cpu_ms_per_allocation"]} ms per allocation | | | | {b["ok"]} ok |

DB writes are statements: the claim (one UPDATE), the probe results (one multi-row INSERT; SQLite
splits it to stay under its 999-parameter limit) and the relays (one prepared UPDATE run per relay
with executemany). Rows written per sweep: one ProbeResult and one Relay per relay, plus events.

Goals: wall ≤ timeout + 1 s: **{r["goals"]["wall_le_timeout_plus_1s"]}**; probe CPU ≤ 1 ms per relay: **{r["goals"]["probe_cpu_le_1ms_per_relay"]}**; whole sweep (loading, probing, storing) ≤ 1 ms per relay: **{r["goals"]["whole_sweep_cpu_le_1ms_per_relay"]}**.
"""


if __name__ == "__main__":
    sys.exit(main())
