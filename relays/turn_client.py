"""The probes' one window onto aioice's TURN client, with no Django in it.

aioice has no public API for what a probe does: an allocation that lives for seconds (so no
refresh loop), and a channel whose binding the probe made itself (so the first send doesn't
bind again). Those reach into the client's attributes. They are all here, listed in INTERNALS,
aioice is pinned to its minor version (pyproject.toml), and tests/relays/test_turn_client.py
fails when an upgrade moves any of them.
"""

from __future__ import annotations

import asyncio
import time

from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

# What this module reads or writes on aioice's client, beyond calling its coroutines.
INTERNALS = {
    "refresh_task": (asyncio.Task, type(None)),
    "receiver": (asyncio.BaseProtocol, type(None)),
    "channel_to_peer": dict,
    "peer_to_channel": dict,
    "channel_refresh_at": dict,
    "channel_number": int,
}
# Its coroutines that the probes call.
CALLS = ("connect", "delete", "channel_bind", "request_with_retry", "send_data")


class TurnClient:
    """One aioice TURN client protocol, as the probes use it."""

    def __init__(self, protocol: TurnClientTcpProtocol | TurnClientUdpProtocol):
        self._protocol = protocol

    async def allocate(self) -> tuple[str, int]:
        """Allocate; returns the relayed address. A probe's allocation lives for seconds: it
        never needs aioice's refresh loop, which is stopped."""
        relayed = await self._protocol.connect()
        task = self._protocol.refresh_task
        if task is not None:
            task.cancel()
            self._protocol.refresh_task = None
        return relayed

    def set_receiver(self, receiver: asyncio.DatagramProtocol) -> None:
        """Where data arriving through the relay goes."""
        self._protocol.receiver = receiver

    async def request(self, message: stun.Message) -> stun.Message:
        """A STUN/TURN request on the allocation, authenticated (retried on a stale nonce)."""
        response, _ = await self._protocol.request_with_retry(message)
        return response

    async def bind_channel(self, number: int, peer: tuple[str, int]) -> None:
        """ChannelBind `number` to `peer` (a permission for it too)."""
        await self._protocol.channel_bind(number, peer)

    def use_channel(self, number: int, peer: tuple[str, int], *, lifetime: float = 500) -> None:
        """Send to `peer` on `number`, bound by bind_channel (the other side's binding made
        the permission): aioice would otherwise bind a channel of its own on the first send."""
        p = self._protocol
        p.channel_to_peer[number] = peer
        p.peer_to_channel[peer] = number
        p.channel_refresh_at[number] = time.time() + lifetime
        p.channel_number = max(p.channel_number, number + 1)

    async def send(self, data: bytes, peer: tuple[str, int]) -> None:
        await self._protocol.send_data(data, peer)

    async def delete(self) -> None:
        """Refresh with lifetime 0: the relay frees the allocation."""
        await self._protocol.delete()
