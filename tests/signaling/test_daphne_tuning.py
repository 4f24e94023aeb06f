"""Daphne as Traverse runs it (signaling/under_daphne.py): its sweeps over every connection run
every few seconds instead of every one or two, and still do their work. A real Daphne process."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from .conftest import session_cookie
from .test_two_processes import Daphne, Device

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_a_peer_that_stops_answering_pings_is_dropped_and_the_others_stay(
    tmp_path, alice, bob
):
    """Keepalive pings still go out and a peer that stops answering is dropped (its socket leaves
    the process's count), while one that answers stays up."""
    server = Daphne(tmp_path, "web", options=("--ping-interval", "1", "--ping-timeout", "2"))
    try:
        awake = await Device.open(server, await sync_to_async(session_cookie)(alice))
        stalled = await Device.open(server, await sync_to_async(session_cookie)(bob))
        assert server.health()[1]["sockets"] == 2
        stalled.ws.transport.pause_reading()  # its pings pile up unread: no pong goes back
        started = time.monotonic()
        while server.health()[1]["sockets"] != 1:
            assert time.monotonic() - started < 30, "the stalled peer was never dropped"
            await asyncio.sleep(0.25)
        dropped_after = time.monotonic() - started
        # The one that answers pings is still served, after many ping intervals.
        await asyncio.sleep(max(0.0, 12 - dropped_after))
        await awake.send("ping", mid="still-here")
        assert (await awake.recv_type("pong"))["ref"] == "still-here"
        assert server.health()[1]["sockets"] == 1
        stalled.ws.transport.resume_reading()
        await awake.ws.close()
        await stalled.ws.close()
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_the_sweeps_are_thinned_once_and_still_reschedule_themselves():
    from daphne.server import Server
    from twisted.internet import reactor

    from signaling.under_daphne import thin_daphne_sweeps

    original = Server.application_checker, Server.timeout_checker
    try:
        Server._traverse_thinned = False
        thin_daphne_sweeps(application_every=3600, timeouts_every=3600)
        thinned = Server.application_checker, Server.timeout_checker
        thin_daphne_sweeps()  # a second call changes nothing
        assert (Server.application_checker, Server.timeout_checker) == thinned

        server = Server.__new__(Server)
        server.connections = {}
        calls = []
        real_call_later = reactor.callLater
        reactor.callLater = lambda delay, fn, *a: calls.append(delay)  # no reactor here
        try:
            Server.application_checker(server)  # never swept: due, upstream's sweep runs
            Server.timeout_checker(server)  # (each calls itself back, in 1 and 2 s)
            assert calls == [1, 2]
            assert server._traverse_applications_at and server._traverse_timeouts_at
            swept_at = server._traverse_applications_at, server._traverse_timeouts_at
            calls.clear()
            Server.application_checker(server)  # not due for an hour: no sweep,
            Server.timeout_checker(server)  # but still called back in 1 and 2 s
            assert calls == [1, 2]
            assert (server._traverse_applications_at, server._traverse_timeouts_at) == swept_at
        finally:
            reactor.callLater = real_call_later
    finally:
        Server.application_checker, Server.timeout_checker = original
        Server._traverse_thinned = False
