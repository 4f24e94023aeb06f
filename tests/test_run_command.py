"""The README's run command, for real: it serves the app on the embedded defaults, makes an admin
who can sign in, brings the local relay up, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import http.cookiejar
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries the marker: everything the run command started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_run_command_serves_signs_in_the_admin_and_stops_cleanly(tmp_path):
    port, marker = free_port(), f"traverse-run-{secrets.token_hex(6)}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        TRAVERSE_VAR_DIR=str(tmp_path / "var"),
        TRAVERSE_PORT=str(port),
        TRAVERSE_RUN_MARKER=marker,
        RELAY_SWEEP_INTERVAL="2",
        RELAY_PROBE_TIMEOUT="1",
    )
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "dev.py", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if opener.open(base + "/accounts/login/", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        output = log_path.read_text()
        assert (
            "DATABASE_URL is unset: using SQLite" in output
            and "starting the embedded Redis" in output
        )
        password = re.search(r"username 'admin', password '([^']+)'", output).group(1)
        assert (
            password not in (ROOT / "dev.py").read_text()
        )  # made for this install, not in the repo

        page = opener.open(base + "/admin/login/").read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode(
            {
                "username": "admin",
                "password": password,
                "csrfmiddlewaretoken": token,
                "next": "/admin/",
            }
        ).encode()
        request = urllib.request.Request(
            base + "/admin/login/", data=form, headers={"Referer": base + "/admin/login/"}
        )
        assert "Site administration" in opener.open(request).read().decode()

        if shutil.which("turnserver"):
            # The local relay, registered and probed by the worker, goes up.
            deadline = time.monotonic() + 30
            while (
                'data-relay="local"'
                not in (fleet := opener.open(base + "/admin/relays/relay/fleet/").read().decode())
                or "relay-badge-up" not in fleet
            ):
                assert time.monotonic() < deadline, fleet[-2000:]
                time.sleep(0.5)
            assert "relay-badge-unsafe" not in fleet  # the local relay passes the safety audit
        started = processes_with(marker)
        assert len(started) >= 4  # web, worker, beat, redis (and the relay)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    deadline = time.monotonic() + 10
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"left behind: {left}\n{log_path.read_text()[-2000:]}"
