"""Early ICE: the callee's devices that negotiate while the call rings (docs/signaling.md).

A ringing device says `early`; from then on it and the call's devices that joined may exchange
offer, answer and candidate, with no media, so that answering only starts the media on a
connection that is already up. This module keeps, in Redis, which devices of a call negotiate
early: a device that rings before the caller's page has joined is found by that join, and a
caller whose page reloads finds them again. The entries die with the ring (TTL); the answer
or the end of the call deletes them.
"""

from __future__ import annotations

import json

from redis import asyncio as aioredis

# A user with many tabs open rings on each: past this many, the others still ring and can
# answer, but negotiate after the answer (the caller's page holds a connection for each).
EARLY_DEVICES_MAX = 4

# HSET the device unless the call already has `limit` others; 1 when it is registered.
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def early_key(call: str) -> str:
    return f"traverse:early:{call}"


async def early_add(
    redis: aioredis.Redis, *, call: str, session: str, card: dict, ttl: int
) -> bool:
    """Register `session` (a device of the user `card` names) as negotiating early in `call`;
    False when the call has EARLY_DEVICES_MAX others already."""
    added = await redis.eval(
        _ADD, 1, early_key(call), session, json.dumps(card), EARLY_DEVICES_MAX, max(ttl, 1)
    )
    return bool(added)


async def early_devices(redis: aioredis.Redis, *, call: str) -> dict[str, dict]:
    """The devices negotiating early in `call`: session -> the card of their user."""
    raw = await redis.hgetall(early_key(call))
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


async def early_remove(redis: aioredis.Redis, *, call: str, session: str | None = None) -> None:
    """One device is no longer negotiating early (its socket went), or, with no `session`, none
    is (the call was answered or ended)."""
    if session is None:
        await redis.delete(early_key(call))
    else:
        await redis.hdel(early_key(call), session)
