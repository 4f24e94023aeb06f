"""Drive the full ASGI app (origin check, session auth, consumer) with WebsocketCommunicator."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from config.asgi import application


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Socket:
    """A signed-in device: a thin wrapper that speaks the envelope."""

    def __init__(self, communicator: WebsocketCommunicator):
        self.c = communicator
        self.welcome: dict | None = None

    @property
    def session(self) -> str:
        """The device session this socket started (what peers address with `to`)."""
        assert self.welcome is not None
        return self.welcome["body"]["session"]

    async def send(self, mtype: str, call=None, body=None, **extra) -> str:
        frame = {"v": 1, "type": mtype, "id": f"c-{mtype}", "body": body or {}, **extra}
        if call is not None:
            frame["call"] = str(call)
        await self.c.send_to(text_data=json.dumps(frame))
        return frame["id"]

    async def send_raw(self, text=None, bytes_data=None) -> None:
        await self.c.send_to(text_data=text, bytes_data=bytes_data)

    async def recv(self, timeout: float = 3) -> dict:
        return json.loads(await self.c.receive_from(timeout=timeout))

    async def recv_type(self, mtype: str, timeout: float = 3) -> dict:
        """The next frame of this type, skipping others (presence-like noise)."""
        while True:
            msg = await self.recv(timeout)
            if msg["type"] == mtype:
                return msg

    async def nothing(self, timeout: float = 0.3) -> bool:
        return await self.c.receive_nothing(timeout=timeout)

    async def error(self, timeout: float = 3) -> dict:
        msg = await self.recv_type("error", timeout)
        return msg["body"]

    async def close(self) -> None:
        if self.c.future.done():  # the consumer already ended (a test killed it)
            return
        await self.c.disconnect()


@pytest.fixture
async def connect():
    opened: list[Socket] = []

    async def open_socket(
        user=None, origin: bytes = b"http://127.0.0.1", path: str = "/ws/signal/"
    ) -> Socket | None:
        headers = [(b"origin", origin), (b"host", b"127.0.0.1")]
        if user is not None:
            headers.append(
                (b"cookie", f"sessionid={await sync_to_async(session_cookie)(user)}".encode())
            )
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        if not connected:
            # The refused app still waits for websocket.disconnect: end it here, or the loop's
            # teardown cancels it mid-receive on the channel layer (a hang seen once in 5 runs).
            refused.append(communicator)
            return None
        first = await communicator.receive_output(timeout=5)
        if first["type"] == "websocket.close":
            # Accepted, then closed (not signed in): the code the browser sees.
            open_socket.last_close = first.get("code")
            refused.append(communicator)
            return None
        sock = Socket(communicator)
        opened.append(sock)
        sock.welcome = json.loads(first["text"])
        assert sock.welcome["type"] == "welcome", sock.welcome
        return sock

    refused: list[WebsocketCommunicator] = []
    open_socket.last_close = None  # type: ignore[attr-defined]
    yield open_socket
    for sock in opened:
        await sock.close()
    for communicator in refused:
        if not communicator.future.done():
            await communicator.disconnect()
    await stop_loop_services()


async def stop_loop_services() -> None:
    """What this test's event loop started for its consumers: the hub's subscriber, and the
    database connection its sync thread keeps (CONN_MAX_AGE), so the test database can be
    dropped at the end."""
    import asyncio
    import contextlib

    from channels.db import database_sync_to_async
    from django.db import connections

    from signaling.broadcast import db_pool_close_connections
    from signaling.hub import running_hub
    from signaling.presence import _clients
    from signaling.sessions import close_pipeline

    hub = running_hub()
    if hub is not None and hub.task is not None:
        hub.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await hub.task
    client = _clients.get(asyncio.get_running_loop())
    if client is not None:
        await close_pipeline(client)
    await database_sync_to_async(connections.close_all)()
    await asyncio.to_thread(db_pool_close_connections)
