"""Daphne, tuned for a server that mostly holds idle sockets (issue 8). Applied from
config/asgi.py when Daphne serves the app; each measured with benchmarks/signaling.py."""

from __future__ import annotations

import time
from typing import Any

# How often Daphne's two sweeps over every connection run. Upstream: the application sweep
# (reap finished consumers; cancel those that outlive application_close_timeout after their
# socket closed) every second, the timeout sweep (send each socket's keepalive ping when it is
# due) every 2 s. At 5,000 idle sockets the two were two thirds of the idle CPU. Every 5 s, the
# pings go out up to 5 s late (every 20-25 s instead of 20), and a finished consumer is reaped
# up to 5 s later. Handshakes are timed by autobahn itself (openHandshakeTimeout).
APPLICATION_SWEEP_SECONDS = 5.0
TIMEOUT_SWEEP_SECONDS = 5.0


def thin_daphne_sweeps(
    application_every: float = APPLICATION_SWEEP_SECONDS,
    timeouts_every: float = TIMEOUT_SWEEP_SECONDS,
) -> None:
    """Run Daphne's sweeps less often. Each still reschedules itself as upstream does (every
    1 and 2 s); the sweep itself runs only once `*_every` seconds have passed."""
    from daphne.server import Server as DaphneServer
    from twisted.internet import reactor as twisted_reactor

    reactor: Any = twisted_reactor  # zope interfaces confuse mypy about `self`
    Server: Any = DaphneServer

    if getattr(Server, "_traverse_thinned", False):
        return
    sweep_applications, sweep_timeouts = Server.application_checker, Server.timeout_checker

    def application_checker(self):
        now, last = time.monotonic(), getattr(self, "_traverse_applications_at", None)
        if last is None or now - last >= application_every:
            self._traverse_applications_at = now
            return sweep_applications(self)  # which calls back in a second
        reactor.callLater(1, self.application_checker)

    def timeout_checker(self):
        now, last = time.monotonic(), getattr(self, "_traverse_timeouts_at", None)
        if last is None or now - last >= timeouts_every:
            self._traverse_timeouts_at = now
            return sweep_timeouts(self)  # which calls back in 2 s
        reactor.callLater(2, self.timeout_checker)

    Server.application_checker = application_checker
    Server.timeout_checker = timeout_checker
    Server._traverse_thinned = True


def _no_highlight(*args, **kwargs) -> str:
    return ""


def quiet_autobahn_debug_arguments() -> None:
    """autobahn builds the arguments of its debug log lines before it knows they are dropped:
    for every frame in and out it looks up a qualified name with `inspect` and colours it with
    click (5% of Daphne's CPU per relayed frame in a profile, issue 8). Traverse logs Daphne
    at WARNING, so those arguments are never shown: make them free."""
    import autobahn.twisted.websocket as twisted_ws
    import autobahn.util
    import autobahn.websocket.protocol as ws_protocol

    autobahn.util._HAS_CLICK = False  # noqa: SLF001 - whatever else autobahn highlights: plain
    for module in (ws_protocol, twisted_ws):
        for name in ("hltype", "hlval", "hlid"):
            if hasattr(module, name):
                setattr(module, name, _no_highlight)
