"""The probes reach into aioice's TURN client (relays/turn_client.py): these fail when an aioice
upgrade moves what they use, before a probe does it in production."""

import asyncio
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import pytest
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from relays.turn_client import CALLS, INTERNALS, TurnClient

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("cls", [TurnClientUdpProtocol, TurnClientTcpProtocol])
def test_the_aioice_internals_the_probes_use_are_where_they_were(cls):
    protocol = cls(
        ("127.0.0.1", 3478), username="u", password="p", lifetime=60, channel_refresh_time=500
    )
    for name, kind in INTERNALS.items():
        assert hasattr(protocol, name), f"aioice's {cls.__name__} has no {name} any more"
        assert isinstance(getattr(protocol, name), kind), f"{name} is not {kind} any more"
    for name in CALLS:
        assert inspect.iscoroutinefunction(getattr(cls, name, None)), f"{name} moved"


def test_use_channel_makes_the_next_send_use_it_without_binding_again():
    sent = []
    protocol = TurnClientUdpProtocol(
        ("127.0.0.1", 3478), username="u", password="p", lifetime=60, channel_refresh_time=500
    )
    protocol._send = sent.append  # the wire: what aioice would write to its socket

    async def bind_refused(*args):
        raise AssertionError("a channel bound by the probe was bound again")

    protocol.channel_bind = bind_refused
    client = TurnClient(protocol)
    client.use_channel(0x4000, ("203.0.113.9", 5000))
    asyncio.run(client.send(b"ping", ("203.0.113.9", 5000)))
    assert sent == [b"\x40\x00\x00\x04ping"]  # ChannelData on 0x4000, 4 bytes
    assert protocol.channel_number == 0x4001  # aioice's next channel is another one


def test_aioice_is_pinned_to_the_minor_version_the_adapter_was_written_for():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    spec = next(d for d in pyproject["project"]["dependencies"] if d.startswith("aioice"))
    low, high = re.fullmatch(r"aioice>=(\d+\.\d+),<(\d+\.\d+)", spec).groups()
    assert int(high.split(".")[1]) == int(low.split(".")[1]) + 1, f"{spec}: one minor version"
    installed = importlib.metadata.version("aioice")
    assert installed.startswith(low + "."), f"aioice {installed} installed, {spec} pinned"
