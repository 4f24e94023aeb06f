"""Real processes to break: a private Redis server, a TCP proxy in front of PostgreSQL that can
be cut, and Daphne, Celery worker and beat started against them. Nothing here is mocked; each
fault is what an operator would see (a process killed, a server frozen, a network cut)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dev import platform_commands, tcp_redis_command
from tests.conftest import free_port, need_binary, wait_until_serving
from tests.e2e.conftest import ROOT, browser, child_env  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.e2e


@dataclass
class RedisServer:
    """A redis-server of the test's own, so killing or freezing it touches nothing else."""

    binary: str
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            tcp_redis_command(self.port, binary=self.binary),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def private_redis():
    server = RedisServer(need_binary("redis-server"), free_port())
    server.start()
    yield server
    with contextlib.suppress(Exception):
        server.thaw()
    server.kill()


@dataclass
class Stack:
    """Daphne, a Celery worker and beat, as `dev.py run` starts them, on the env given."""

    env: dict
    logs: Path
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    concurrency: int = 1  # the run command's worker runs 2

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self, name: str) -> list[str]:
        return platform_commands(
            python=sys.executable,
            port=self.port,
            concurrency=self.concurrency,
            beat_schedule=self.logs / "beat-schedule",
        )[name]

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(
            self.argv(name),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if name == "web":
            wait_until_serving(
                self.base + "/accounts/login/", self.procs[name], self.logs / "web.log"
            )

    def stop(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, signal.SIGTERM)


@pytest.fixture
def stack(django_db_setup, tmp_path):
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("fault tests share the database with child processes: they run on PostgreSQL")
    made: list[Stack] = []

    def make(**overrides) -> Stack:
        env = {**child_env(), **{k: str(v) for k, v in overrides.items()}}
        s = Stack(env=env, logs=tmp_path)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop_all()
