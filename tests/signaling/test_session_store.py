"""The session store's pushes go to Redis in pipelines (sessions._AutoPipeline): calls made in
one turn of the event loop share a round trip, but each keeps its own order, result and error."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from signaling import sessions
from signaling.sessions import (
    close_pipeline,
    frames_after,
    session_detach,
    session_forget,
    session_open,
    session_push,
)
from tests.conftest import free_port


@pytest.fixture
async def redis():
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    yield client
    await close_pipeline(client)
    await client.aclose()


async def test_pushes_in_one_turn_keep_their_order_and_their_own_results(redis):
    live, away, gone = "s-test-live", "s-test-away", "s-test-gone"
    for s in (live, away, gone):
        await session_forget(redis, session=s)
    await session_open(redis, session=live, user_id=1, channel="node!a")
    await session_open(redis, session=away, user_id=2, channel="node!b")
    await session_detach(redis, session=away, channel="node!b")

    pushes = [session_push(redis, session=live, text=f'{{"n":{i}}}') for i in range(30)]
    pushes += [session_push(redis, session=away, text=f'{{"n":{i}}}', limit=3) for i in range(5)]
    pushes.append(session_push(redis, session=gone, text="{}"))
    results = await asyncio.gather(*pushes)

    assert results[:30] == [(i, "node!a") for i in range(1, 31)]
    # The device that is away takes 3 frames, then the sender is told its queue is full.
    assert results[30:35] == [(1, ""), (2, ""), (3, ""), (-1, ""), (-1, "")]
    assert results[35] == (0, "")
    stored = await frames_after(redis, session=live, after=0, upto=30)
    assert [seq for seq, _ in stored] == list(range(1, 31))
    assert stored[4][1] == '{"seq":5,"n":4}'


async def test_a_redis_that_forgot_the_scripts_still_numbers_every_push(redis):
    session = "s-test-flushed"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="node!a")
    assert await session_push(redis, session=session, text="{}") == (1, "node!a")
    await redis.script_flush()  # as a restarted Redis
    results = await asyncio.gather(
        *(session_push(redis, session=session, text="{}") for _ in range(10))
    )
    assert [seq for seq, _ in results] == list(range(2, 12))


async def test_pushes_made_while_one_is_under_way_share_one_round_trip(redis, monkeypatch):
    session = "s-test-batched"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="node!a")
    exchanges: list[int] = []
    real = sessions._AutoPipeline._exchange

    async def counted(self, batch, raw=False):
        exchanges.append(len(batch))
        return await real(self, batch, raw)

    monkeypatch.setattr(sessions._AutoPipeline, "_exchange", counted)
    results = await asyncio.gather(
        *(session_push(redis, session=session, text="{}") for _ in range(40))
    )
    assert [seq for seq, _ in results] == list(range(1, 41))
    # The first goes alone, at once; the 39 made meanwhile go together when it is back.
    assert exchanges == [1, 39]


async def test_a_cut_connection_fails_what_was_on_it_and_the_next_push_reconnects(redis):
    session = "s-test-cut"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="node!a")
    assert await session_push(redis, session=session, text="{}") == (1, "node!a")
    connection = sessions._pipelines[redis].connection
    host, port = connection._writer.get_extra_info("sockname")[:2]
    assert await redis.client_kill(f"{host}:{port}")
    outcome = await asyncio.gather(
        *(session_push(redis, session=session, text="{}") for _ in range(3)),
        return_exceptions=True,
    )
    failed = [r for r in outcome if isinstance(r, Exception)]
    assert all(isinstance(r, RedisConnectionError) for r in failed), outcome
    numbered = [r[0] for r in outcome if not isinstance(r, Exception)]
    seq, _ = await session_push(redis, session=session, text="{}")
    assert numbered + [seq] == list(range(2, 2 + len(numbered) + 1))


async def test_an_unreachable_redis_fails_each_waiting_push_and_the_next_ones_work():
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    results = await asyncio.gather(
        *(session_push(dead, session="s-x", text="{}") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await dead.aclose()

    live = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        await session_forget(live, session="s-test-after")
        await session_open(live, session="s-test-after", user_id=1, channel="node!a")
        assert await session_push(live, session="s-test-after", text="{}") == (1, "node!a")
    finally:
        await live.aclose()
