"""The README's run command, for real: it serves the app on the embedded defaults, makes an admin
who can sign in, brings the local relay up, keeps var/ private, restarts a child that dies, lets
the README's admin commands run as written, and Ctrl-C leaves no process behind."""

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

import pytest

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


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


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
        var = tmp_path / "var"
        password = (var / "admin-password").read_text().strip()
        assert password not in output  # never printed: it sits in a file only its owner reads
        assert password not in (ROOT / "dev.py").read_text()  # made for this install
        assert (var / "admin-password").stat().st_mode & 0o777 == 0o600
        assert var.stat().st_mode & 0o777 == 0o700
        for path in var.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"

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

        # The README's admin commands work as written, with nothing exported by hand.
        cli_env = {k: v for k, v in env.items() if k != "DJANGO_SECRET_KEY"}
        listed = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "manage.py", "relays", "list"],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode in (0, 1), listed.stderr
        assert "DJANGO_SECRET_KEY" not in listed.stderr and "unable to open" not in listed.stderr
        if shutil.which("turnserver"):
            assert "local" in listed.stdout
            # The local relay publishes its allocations (redis-statsdb, to a Redis of its own on
            # loopback TCP) and the stats listener hears them: the worker's first sweep
            # allocates on it, and the relay is stamped as publishing.
            heard = (
                "from relays.models import Relay; print(Relay.objects.get(name='local').stats_at)"
            )
            deadline = time.monotonic() + 90
            while True:
                out = subprocess.run(
                    [str(ROOT / ".venv" / "bin" / "python"), "manage.py", "shell", "-c", heard],
                    cwd=ROOT,
                    env=cli_env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout.strip()
                if out and out != "None":
                    break
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(1)

        # A child that dies is restarted, and the terminal says so; the rest keeps serving.
        for name, needle in (("worker", b"worker"), ("redis", b"redis.sock")):

            def children(needle=needle) -> list[int]:
                # By parent, not by marker: redis-server rewrites its environment block when it
                # sets its process title.
                pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
                return [p for p in pids if parent_of(p) == proc.pid and needle in cmdline(p)]

            [pid] = children()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not [p for p in children() if p != pid]:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.3)
            assert f"{name} exited with code" in log_path.read_text()
        assert proc.poll() is None
        assert opener.open(base + "/accounts/login/", timeout=5).status == 200
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


def test_a_password_protected_redis_starts_whatever_its_password_begins_with(tmp_path):
    """The run command's Redis for coturn's statistics takes a generated password. redis-server
    reads an argument that begins with "--" as the next option's name, so one password in 4,096
    (secrets.token_urlsafe) left that Redis unable to start on every run. The password now goes
    in a 0600 config file, where no other local user can read it in the process's arguments."""
    import stat

    import redis

    from dev import tcp_redis_command

    password = "--looks-like-an-option_" + secrets.token_urlsafe(8)
    port = free_port()
    argv = tcp_redis_command(port, password=password, config_dir=tmp_path)
    assert not any(password in arg for arg in argv)
    (conf,) = tmp_path.glob("redis-*.conf")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="wrong").ping()
        client.close()
    finally:
        proc.kill()
        proc.wait(5)


def test_the_deploy_files_start_the_worker_as_the_run_command_does():
    """The systemd unit and the Procfile run the Celery worker with the run command's flags
    (dev.WORKER_FLAGS), which the browser and fault tests run too."""
    from dev import WORKER_FLAGS, platform_commands

    worker = platform_commands(python="python", port=1, concurrency=1, beat_schedule=ROOT)["worker"]
    assert worker[worker.index("worker") :][-len(WORKER_FLAGS) :] == list(WORKER_FLAGS)
    unit = (ROOT / "deploy" / "systemd" / "traverse-worker.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    procfile = (ROOT / "Procfile").read_text()
    (procfile_worker,) = [line for line in procfile.splitlines() if line.startswith("worker:")]
    for line in (exec_start, procfile_worker):
        words = line.split()
        assert words[words.index("worker") :][-len(WORKER_FLAGS) :] == list(WORKER_FLAGS), line
