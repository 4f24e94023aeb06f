"""The real processes for end-to-end tests: Daphne and a Celery worker on the test database,
and headless Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from dev import platform_commands
from tests.conftest import free_port, need_binary, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Ringtones play without a click first (a real page rings visually until it has had one).
    "--autoplay-policy=no-user-gesture-required",
]


def database_url_for_subprocess() -> str:
    """The test database (pytest-django renamed it) as a DATABASE_URL for child processes."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    host = s.get("HOST") or ""
    if host.startswith("/"):
        host = quote(host, safe="")
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{s['NAME']}"


def child_env() -> dict:
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_for_subprocess()
    env["PYTHONUNBUFFERED"] = "1"
    # The tests queue each sweep themselves; a sweep at worker start would race them for the claims.
    env["RELAY_SWEEP_ON_WORKER_START"] = "false"
    # Each test makes its own relays (and the database is emptied between tests) while these
    # processes live on: their selection reads the fleet afresh (tests/relays/test_snapshot.py
    # tests the snapshot itself).
    env["RELAY_SNAPSHOT_SECONDS"] = "0"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


@contextlib.contextmanager
def platform_running(logs: Path, env: dict, host: str = "127.0.0.1", port: int | None = None):
    """Daphne serving the ASGI app and a Celery worker, on the test database and Redis,
    listening on `host` (and `port`, else a free one); yields the base URL."""
    port = port or free_port()
    commands = platform_commands(
        python=sys.executable,
        port=port,
        concurrency=1,
        beat_schedule=logs / "beat-schedule",
        host=host,
    )
    procs = {
        name: subprocess.Popen(
            commands[name],
            cwd=ROOT,
            env=env,
            stdout=open(logs / f"{name}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for name in ("web", "worker")
    }
    base = f"http://{host}" if port == 80 else f"http://{host}:{port}"
    try:
        wait_until_serving(base + "/accounts/login/", procs["web"], logs / "web.log")
        yield base
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def need_postgres() -> None:
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip(
            "end-to-end tests share the database with child processes: they run on PostgreSQL"
        )


@pytest.fixture(scope="module")
def services(django_db_setup, django_db_blocker, tmp_path_factory, request):
    """Daphne serving the ASGI app and a Celery worker, both on the test database and Redis.
    A test module can set SERVICES_ENV (e.g. a short ring timeout) for both processes."""
    need_postgres()
    logs = tmp_path_factory.mktemp("e2e-logs")
    env = {**child_env(), **getattr(request.module, "SERVICES_ENV", {})}
    with platform_running(logs, env) as base:
        yield {"base": base, "logs": logs}


@pytest.fixture(scope="module")
def browser():
    need_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield b
        b.close()


@pytest.fixture(autouse=True)
def _close_pages_after_each_test(request):
    """Every page a test opened is closed after it: a call left running in a page keeps its
    media, its ICE restarts and its socket going into the next test (on 2 cores, that starved
    the ICE-restart test of CPU)."""
    yield
    if "browser" in request.fixturenames:
        for ctx in request.getfixturevalue("browser").contexts:
            with contextlib.suppress(Exception):  # a page mid-navigation: it goes anyway
                ctx.close()


# Playwright's sync API runs an event loop in this thread, which makes Django's async-safety
# check refuse the ORM in the test body. The test itself is plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def wait_until(page, expression: str, timeout: float = 20_000, arg=None):
    """Poll a page expression until it is truthy; returns its value.

    Playwright's wait_for_function compiles its predicate with eval inside the page, which the
    site's Content-Security-Policy (script-src 'self', no 'unsafe-eval') rightly refuses.
    page.evaluate goes through the DevTools protocol, which CSP does not govern, so polling with
    it tests the page under its real policy.
    """
    deadline = time.monotonic() + timeout / 1000
    while True:
        value = page.evaluate(expression) if arg is None else page.evaluate(expression, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} ms waiting for: {expression}")
        page.wait_for_timeout(100)


CONNECTED = "window.traverseCall && window.traverseCall.status === 'connected'"


MEDIA_STATE = """async () => {
  const out = [];
  const c = window.traverseCall;
  for (const [where, peers] of [["peer", c.peers], ["early", c.early]]) {
    for (const p of peers.values()) {
      const t = p.pc ? p.pc.getTransceivers().map((x) => ({
        mid: x.mid, direction: x.direction, current: x.currentDirection,
        sends: x.sender.track ? x.sender.track.kind : null, receives: x.receiver.track.kind,
      })) : null;
      out.push({ where, user: p.user, session: p.session, state: p.pc && p.pc.connectionState,
        signaling: p.pc && p.pc.signalingState, transceivers: t });
    }
  }
  return { status: c.status, rtp: await c.rtpBytes(), peers: out };
}"""


def media_state(page) -> dict:
    """What a call page's connections negotiated and carry: for the message of a failed media
    assertion (which side stopped sending, and on which transceiver)."""
    return page.evaluate(MEDIA_STATE)


def sweep_through_worker() -> dict:
    """One real sweep, run by the Celery worker process (not eager mode)."""
    from relays.tasks import sweep_relays

    return sweep_relays.delay().get(timeout=60)


def sign_in(browser, base: str, username: str, password: str):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.on("pageerror", lambda e: print(f"[{username}] pageerror: {e}"))
    page.goto(base + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    # The privacy switch: relay only (iceTransportPolicy "relay"), so the browsers talk to the
    # relay on 127.0.0.1 and nothing else.
    page.check("#force-relay")
    page.wait_for_selector("#conn-status:has-text('Online')")
    return page


RINGING = "window.traverseRinger && window.traverseRinger.ringing.length > 0"


def dial(caller_page, callee: str, *, voice: bool = False) -> None:
    """The caller rings `callee` from the home page and lands on the call screen."""
    caller_page.fill("input[name=callee]", callee)
    caller_page.click("#dial-voice" if voice else "#dial")
    caller_page.wait_for_url("**/calls/*/")


def answer(callee_page, *, video: bool = True) -> None:
    """The callee answers from the ringing banner (any page of the site)."""
    wait_until(callee_page, RINGING, timeout=10_000)
    callee_page.click(f"#ringer [data-action=accept-{'video' if video else 'audio'}]")
    # The call screen was mounted while it rang (early ICE): it shows, and the address becomes
    # the call's, with no page load (a page without it navigates to the call page instead).
    callee_page.wait_for_url("**/calls/*/*")


def dial_and_answer(caller_page, callee_page, callee: str) -> None:
    """The caller rings `callee` from the home page, the callee answers on theirs, and both
    pages get connected."""
    dial(caller_page, callee)
    answer(callee_page)
    for page in (caller_page, callee_page):
        wait_until(page, CONNECTED, timeout=20_000)
