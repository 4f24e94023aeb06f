"""Shared fixtures: the owner/member/outsider users, and real coturn relays on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relays.coturn import render_coturn_config

IN_CI = os.environ.get("CI") == "true"


def need_binary(name: str) -> str:
    """The path of a binary the test needs. In CI a missing binary fails the test; elsewhere it skips."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (`python3 dev.py test` installs it as root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def password() -> str:
    return "correct horse battery staple"


@pytest.fixture
def alice(django_user_model, password):
    """The owner: starts calls in most tests."""
    return django_user_model.objects.create_user("alice", password=password, display_name="Alice")


@pytest.fixture
def bob(django_user_model, password):
    """The member: the other participant."""
    return django_user_model.objects.create_user("bob", password=password, display_name="Bob")


@pytest.fixture
def charlie(django_user_model, password):
    """The outsider: in no call of alice's and bob's."""
    return django_user_model.objects.create_user(
        "charlie", password=password, display_name="Charlie"
    )


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP."""
    for _ in range(100):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


_relay_port_base = 50000 + (os.getpid() % 50) * 200


@dataclass
class Coturn:
    port: int
    secret: str
    proc: subprocess.Popen
    conf: Path

    @property
    def urls(self) -> list[str]:
        return [
            f"turn:127.0.0.1:{self.port}?transport=udp",
            f"turn:127.0.0.1:{self.port}?transport=tcp",
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def coturn(tmp_path):
    """A factory of real coturn relays on 127.0.0.1, each with its own port, secret and state dir."""
    binary = need_binary("turnserver")
    started: list[Coturn] = []

    def start(
        *,
        secret: str | None = None,
        allow_loopback_peers: bool = True,
        extra: list[str] | None = None,
    ) -> Coturn:
        global _relay_port_base
        secret = secret or secrets.token_urlsafe(24)
        port = free_port()
        state = tmp_path / f"coturn-{port}"
        state.mkdir()
        lo, _relay_port_base = _relay_port_base, _relay_port_base + 40
        if _relay_port_base > 64000:
            _relay_port_base = 50000
        conf = state / "turnserver.conf"
        conf.write_text(
            render_coturn_config(
                listen_ip="127.0.0.1",
                port=port,
                secret=secret,
                realm="test.traverse",
                state_dir=str(state),
                min_port=lo,
                max_port=lo + 39,
                allow_loopback_peers=allow_loopback_peers,
                log_file=str(state / "turn.log"),
                extra=extra,
            )
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        relay = Coturn(port=port, secret=secret, proc=proc, conf=conf)
        started.append(relay)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return relay
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"turnserver exited: {(state / 'turn.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        raise RuntimeError("turnserver did not start listening")

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture(autouse=True)
def _no_rate_limits_unless_asked(settings, request):
    """Rate-limit counters live in the shared Redis; only tests marked `ratelimit` count them."""
    settings.RATELIMIT_ENABLE = "ratelimit" in request.keywords
