"""The session store (signaling/sessions.py): who numbers a frame, what is kept for a resume,
and the pipelines every call goes through (calls made while one is under way share a round trip,
each keeping its own order, result and error)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from signaling import sessions
from signaling.sessions import (
    MOVED,
    close_pipeline,
    delivery_header,
    parse_forwarded,
    session_adopt,
    session_detach,
    session_forget,
    session_keep,
    session_open,
    session_push,
    session_store,
    session_take_inbox,
)
from tests.conftest import free_port


@pytest.fixture
async def redis():
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    yield client
    await close_pipeline(client)
    await client.aclose()


async def away(redis, session: str, user_id: int = 1) -> str:
    """A session whose socket closed: pushes to it are numbered and kept in Redis."""
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=user_id, channel="node!gone")
    await session_detach(redis, session=session, channel="node!gone")
    return session


def push(redis, session: str, n: int = 0, limit: int = 0):
    return session_push(
        redis,
        session=session,
        text=f'{{"n":{n}}}',
        publish=delivery_header(session, "candidate", None),
        limit=limit,
    )


async def drop_pipeline_connection(redis) -> None:
    """Redis drops the pipeline's connection, and this side has seen it close (else a write
    made now may still go out)."""
    connection = sessions._pipelines[redis].connection
    host, port = connection._writer.get_extra_info("sockname")[:2]
    assert await redis.client_kill(f"{host}:{port}")
    for _ in range(50):
        if sessions._transport(connection).is_closing():
            break
        await asyncio.sleep(0.01)


async def test_pushes_in_one_turn_keep_their_order_and_their_own_results(redis):
    s1, s2 = await away(redis, "s-test-a"), await away(redis, "s-test-b")
    await session_forget(redis, session="s-test-gone")
    pushes = [push(redis, s1, i) for i in range(30)]
    pushes += [push(redis, s2, i, limit=3) for i in range(5)]
    pushes.append(push(redis, "s-test-gone"))
    results = await asyncio.gather(*pushes)

    assert results[:30] == [(i, "") for i in range(1, 31)]
    # The device that is away takes 3 frames, then the sender is told its queue is full.
    assert results[30:35] == [(1, ""), (2, ""), (3, ""), (-1, ""), (-1, "")]
    assert results[35] == (0, "")
    seq, _, frames, _ = await session_adopt(
        redis, session=s1, user_id=1, channel="node!new", last_seq=0
    )
    assert seq == 30 and [n for n, _ in frames] == list(range(1, 31))
    assert frames[4][1] == '{"seq":5,"n":4}'


async def test_a_live_session_is_numbered_by_its_owner_not_by_pushes(redis):
    session = "s-test-live"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="nodeX!c1")
    listener = redis.pubsub()
    await listener.subscribe("traverse:node:nodeX")
    # Someone else's frame is forwarded, unnumbered, to the process that holds the socket.
    assert await push(redis, session, 7) == (-2, "nodeX!c1")
    message = None
    while message is None:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=3)
    assert parse_forwarded(message["data"]) == (session, "candidate", None, '{"n":7}')
    await listener.aclose()

    # The owner numbers and keeps what it sends; a socket that doesn't hold it is refused.
    assert await session_store(redis, session=session, channel="nodeX!c1", seq=1, text="{}") == 1
    assert await session_store(redis, session=session, channel="nodeY!c2", seq=2, text="{}") == 0
    assert await session_store(redis, session="s-test-nope", channel="n!c", seq=1, text="{}") == -2
    seq, old, frames, inbox = await session_adopt(
        redis, session=session, user_id=1, channel="nodeY!c2", last_seq=0
    )
    assert (seq, old, [n for n, _ in frames], inbox) == (1, "nodeX!c1", [1], [])


async def test_frames_for_a_process_nobody_listens_for_wait_for_the_next_owner(redis):
    session = "s-test-orphan"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="deadnode!c1")
    assert await session_store(redis, session=session, channel="deadnode!c1", seq=1, text="{}")
    # The owner died after sending seq 2 and 3, before it kept them; peers keep sending.
    assert [await push(redis, session, i) for i in range(3)] == [(-3, "deadnode!c1")] * 3
    assert await push(redis, session, 9, limit=3) == (-1, "")
    # The page got up to 3 and resumes on another process: it carries on from 3, with what
    # waited.
    seq, old, frames, inbox = await session_adopt(
        redis, session=session, user_id=1, channel="live!c2", last_seq=3
    )
    assert (seq, old, frames) == (3, "deadnode!c1", [])
    assert [parse_forwarded(m)[3] for m in inbox] == ['{"n":0}', '{"n":1}', '{"n":2}']
    _, _, _, again = await session_adopt(
        redis, session=session, user_id=1, channel="live!c3", last_seq=3
    )
    assert again == []


async def test_an_owner_that_lost_its_session_hears_so_and_what_the_page_had_is_not_sent_again(
    redis,
):
    session = "s-test-moved"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="old!c1")
    listener = redis.pubsub()
    await listener.subscribe("traverse:node:old")
    await session_adopt(redis, session=session, user_id=1, channel="new!c2", last_seq=5)
    message = None
    while message is None:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=3)
    assert parse_forwarded(message["data"]) == (session, MOVED, None, "old!c1")
    await listener.aclose()
    # The old owner's late stores: the page had up to 5 (refused, nothing to do); 6 it had
    # not (refused: send it on).
    assert await session_store(redis, session=session, channel="old!c1", seq=5, text="{}") == -1
    assert await session_store(redis, session=session, channel="old!c1", seq=6, text="{}") == 0
    # Nor can another user take the session, nor a lastSeq far ahead of it.
    assert (await session_adopt(redis, session=session, user_id=2, channel="x!y", last_seq=5))[
        0
    ] == -1
    assert (await session_adopt(redis, session=session, user_id=1, channel="x!y", last_seq=10**6))[
        0
    ] == -2


async def test_a_redis_that_forgot_the_scripts_still_numbers_every_push(redis):
    session = await away(redis, "s-test-flushed")
    assert await push(redis, session) == (1, "")
    await redis.script_flush()  # as a restarted Redis
    results = await asyncio.gather(*(push(redis, session) for _ in range(10)))
    assert [seq for seq, _ in results] == list(range(2, 12))


async def test_pushes_made_while_one_is_under_way_share_one_round_trip(redis, monkeypatch):
    session = await away(redis, "s-test-batched")
    exchanges: list[int] = []
    real = sessions._AutoPipeline._exchange

    async def counted(self, batch, raw=False, due=False):
        if not raw:
            exchanges.append(len(batch))
        return await real(self, batch, raw, due)

    monkeypatch.setattr(sessions._AutoPipeline, "_exchange", counted)
    results = await asyncio.gather(*(push(redis, session) for _ in range(40)))
    assert [seq for seq, _ in results] == list(range(1, 41))
    # The first goes alone, at once; the 39 made meanwhile go together when it is back.
    assert exchanges == [1, 39]


async def test_a_cut_connection_fails_what_was_on_it_and_the_next_push_reconnects(redis):
    session = await away(redis, "s-test-cut")
    assert await push(redis, session) == (1, "")
    connection = sessions._pipelines[redis].connection
    host, port = connection._writer.get_extra_info("sockname")[:2]
    assert await redis.client_kill(f"{host}:{port}")
    outcome = await asyncio.gather(
        *(push(redis, session) for _ in range(3)), return_exceptions=True
    )
    failed = [r for r in outcome if isinstance(r, Exception)]
    assert all(isinstance(r, RedisConnectionError) for r in failed), outcome
    numbered = [r[0] for r in outcome if not isinstance(r, Exception)]
    seq, _ = await push(redis, session)
    assert numbered + [seq] == list(range(2, 2 + len(numbered) + 1))


async def test_an_unreachable_redis_fails_each_waiting_push():
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    results = await asyncio.gather(*(push(dead, "s-x") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await close_pipeline(dead)
    await dead.aclose()


async def test_an_owners_stores_are_kept_even_across_a_script_flush(redis, monkeypatch):
    """Stores go without waiting for their replies, which are read later, in one go."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    session = "s-test-lazy"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="n!c")
    first = [session_store(redis, session=session, channel="n!c", seq=n, text="{}") for n in (1, 2)]
    assert await asyncio.gather(*first) == [1, 1]
    await redis.script_flush()
    later = [
        session_store(redis, session=session, channel="n!c", seq=n, text=f'{{"n":{n}}}')
        for n in range(3, 13)
    ]
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == [1] * 10
    seq, _, frames, _ = await session_adopt(
        redis, session=session, user_id=1, channel="n!d", last_seq=0
    )
    assert seq == 12 and [n for n, _ in frames] == list(range(1, 13))


async def test_a_store_whose_reply_is_owed_when_redis_drops_the_connection_fails(
    redis, monkeypatch
):
    """A store's reply is read later. When Redis has dropped the connection by then, the store
    fails (the owner logs that a resume won't have the frame) and the next ones are kept on a
    new connection. Before, the failed read dropped the stores still owed a reply, and their
    futures never resolved."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    session = "s-test-lazy-cut"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="n!c")
    assert await session_store(redis, session=session, channel="n!c", seq=1, text="{}") == 1
    await drop_pipeline_connection(redis)
    lost = session_store(redis, session=session, channel="n!c", seq=2, text="{}")
    with pytest.raises((RedisConnectionError, ConnectionError)):
        await asyncio.wait_for(lost, 5)
    kept = [session_store(redis, session=session, channel="n!c", seq=n, text="{}") for n in (3, 4)]
    assert await asyncio.wait_for(asyncio.gather(*kept), 5) == [1, 1]
    seq, _, frames, _ = await session_adopt(
        redis, session=session, user_id=1, channel="n!d", last_seq=0
    )
    assert [n for n, _ in frames] == [1, 3, 4]


async def three_sessions(redis) -> tuple[str, str, str]:
    """One held by "n!c", one resumed elsewhere ("n!other"), one that Redis doesn't have."""
    live, moved, gone = "s-test-live-1", "s-test-moved-1", "s-test-gone-1"
    for session in (live, moved, gone):
        await session_forget(redis, session=session)
    await session_open(redis, session=live, user_id=1, channel="n!c")
    await session_open(redis, session=moved, user_id=1, channel="n!other")
    first = session_store(redis, session=live, channel="n!c", seq=1, text="{}")
    await session_take_inbox(redis, session=live)  # a call someone waits for: its reply, too
    assert first.result() == 1
    return live, moved, gone


def evalsha_writes(monkeypatch) -> list[list[int]]:
    """Each write of script calls: the number of keys of each call in it."""
    writes: list[list[int]] = []
    real = sessions.pack_commands

    def packed(commands):
        calls = [c[2] for c in commands if c[0] == "EVALSHA"]
        if calls:
            writes.append(calls)
        return real(commands)

    monkeypatch.setattr(sessions, "pack_commands", packed)
    return writes


async def kept_seqs(redis, session: str) -> list[int]:
    _, _, frames, _ = await session_adopt(
        redis, session=session, user_id=1, channel="n!later", last_seq=0
    )
    return [n for n, _ in frames]


async def test_stores_made_together_go_as_one_script_call_each_with_its_own_code(
    redis, monkeypatch
):
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    live, moved, gone = await three_sessions(redis)
    writes = evalsha_writes(monkeypatch)
    stores = [session_store(redis, session=live, channel="n!c", seq=n, text="{}") for n in (2, 3)]
    stores.append(session_store(redis, session=moved, channel="n!c", seq=1, text="{}"))
    stores.append(session_store(redis, session=gone, channel="n!c", seq=1, text="{}"))
    stores.append(session_store(redis, session=live, channel="n!c", seq=4, text='{"n":4}'))
    assert await asyncio.wait_for(asyncio.gather(*stores), 5) == [1, 1, 0, -2, 1]
    assert writes == [[10]]  # one write, one script call: two keys for each of the five
    assert await kept_seqs(redis, live) == [1, 2, 3, 4]
    assert await kept_seqs(redis, moved) == []


async def test_a_script_call_holds_a_bounded_number_of_stores(redis, monkeypatch):
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    monkeypatch.setattr(sessions, "STORES_PER_CALL", 4)
    live, _, _ = await three_sessions(redis)
    writes = evalsha_writes(monkeypatch)
    stores = [
        session_store(redis, session=live, channel="n!c", seq=n, text="{}") for n in range(2, 12)
    ]
    assert await asyncio.wait_for(asyncio.gather(*stores), 5) == [1] * 10
    assert writes == [[8, 8, 4]]
    assert await kept_seqs(redis, live) == list(range(1, 12))


async def test_the_owner_hears_only_of_frames_that_were_not_kept(redis, monkeypatch):
    """session_keep (the owner's hot path) calls back for a frame refused or lost, with its
    code or the error, and never for a kept one. One owner's failing callback doesn't keep the
    others from hearing."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    live, moved, gone = await three_sessions(redis)
    heard: list = []

    def broken(outcome):
        heard.append(("broken", outcome))
        raise RuntimeError("an owner's bug")

    for n in (2, 3):
        session_keep(
            redis, session=live, channel="n!c", seq=n, text="{}", ttl=0, unkept=heard.append
        )
    session_keep(redis, session=gone, channel="n!c", seq=1, text="{}", ttl=0, unkept=broken)
    session_keep(redis, session=moved, channel="n!c", seq=1, text="{}", ttl=0, unkept=heard.append)
    for _ in range(500):
        if len(heard) == 2:
            break
        await asyncio.sleep(0.01)
    assert heard == [("broken", -2), 0]
    assert await kept_seqs(redis, live) == [1, 2, 3]


async def test_the_owner_hears_of_frames_lost_with_a_dropped_connection(redis, monkeypatch):
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    live, _, _ = await three_sessions(redis)
    heard: list = []
    await drop_pipeline_connection(redis)
    session_keep(redis, session=live, channel="n!c", seq=2, text="{}", ttl=0, unkept=heard.append)
    for _ in range(500):
        if heard:
            break
        await asyncio.sleep(0.01)
    assert len(heard) == 1 and isinstance(heard[0], (RedisConnectionError, ConnectionError))
    session_keep(redis, session=live, channel="n!c", seq=3, text="{}", ttl=0, unkept=heard.append)
    assert await kept_seqs(redis, live) == [1, 3]  # the next one is kept, on a new connection
    assert len(heard) == 1


async def test_a_call_someone_waits_for_does_not_wait_for_the_stores_window(redis, monkeypatch):
    """The stores wait LAZY_WRITE_SECONDS for others; a detach made meanwhile goes at once,
    after them (the session's seq is the last frame stored)."""
    monkeypatch.setattr(sessions, "LAZY_WRITE_SECONDS", 60)
    live, _, _ = await three_sessions(redis)
    pipeline = sessions._pipelines[redis]
    pipeline.written = asyncio.get_running_loop().time()  # a write just went: under load
    stores = [session_store(redis, session=live, channel="n!c", seq=n, text="{}") for n in (2, 3)]
    assert isinstance(pipeline.writer, asyncio.TimerHandle)  # they wait for the window
    await asyncio.wait_for(session_detach(redis, session=live, channel="n!c"), 5)
    assert await asyncio.wait_for(asyncio.gather(*stores), 5) == [1, 1]
    assert await redis.hget(f"traverse:sess:{live}", "seq") == b"3"


async def test_stores_wait_for_others_only_under_load(redis, monkeypatch):
    """At light load a store goes at the end of the loop's turn (a timer would wake the process
    once more for each frame); right after another write it waits LAZY_WRITE_SECONDS, and the
    stores made meanwhile go with it."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    live, _, _ = await three_sessions(redis)
    pipeline = sessions._pipelines[redis]
    writes = evalsha_writes(monkeypatch)
    await asyncio.sleep(sessions.LAZY_BUSY_SECONDS * 2)
    first = session_store(redis, session=live, channel="n!c", seq=2, text="{}")
    assert not isinstance(pipeline.writer, asyncio.TimerHandle)
    await asyncio.sleep(0)  # the end of this turn: written
    assert writes == [[2]]
    later = [session_store(redis, session=live, channel="n!c", seq=3, text="{}")]
    assert isinstance(pipeline.writer, asyncio.TimerHandle)
    await asyncio.sleep(sessions.LAZY_WRITE_SECONDS / 4)
    later.append(session_store(redis, session=live, channel="n!c", seq=4, text="{}"))
    assert await asyncio.wait_for(asyncio.gather(first, *later), 5) == [1, 1, 1]
    assert writes == [[2], [4]]


async def test_a_closed_pipeline_does_not_write_the_stores_it_held(redis, monkeypatch):
    """close_pipeline cancels a lazy write that waits for its window: a pipeline closed within
    LAZY_WRITE_SECONDS of a store used to open a new connection afterwards, with nobody to
    close it."""
    live, _, _ = await three_sessions(redis)
    pipeline = sessions._pipelines[redis]
    pipeline.written = asyncio.get_running_loop().time()  # a write just went: under load
    session_keep(redis, session=live, channel="n!c", seq=2, text="{}", ttl=0, unkept=print)
    assert isinstance(pipeline.writer, asyncio.TimerHandle)
    await close_pipeline(redis)
    await asyncio.sleep(sessions.LAZY_WRITE_SECONDS * 5)
    assert not pipeline.connection.is_connected
    assert redis not in sessions._pipelines


async def test_owed_replies_are_read_a_few_at_a_time(redis, monkeypatch):
    """Replies nobody waits for are read once LAZY_REPLIES_MAX are owed, not only when
    LAZY_REPLY_SECONDS have passed: read a thousand at once, they held the loop up for ~8 ms."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 60)
    monkeypatch.setattr(sessions, "LAZY_WRITE_SECONDS", 0)
    live, _, _ = await three_sessions(redis)
    stores = []
    for n in range(2, 2 + 2 * sessions.LAZY_REPLIES_MAX):
        stores.append(session_store(redis, session=live, channel="n!c", seq=n, text="{}"))
        await asyncio.sleep(0.005)  # a write each
    await asyncio.sleep(0.5)
    read = sum(1 for f in stores if f.done())
    assert read >= sessions.LAZY_REPLIES_MAX
    assert all(f.result() == 1 for f in stores if f.done())


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "0" * 40, 2, "k:1", "k:2", "héllo ☎", 0, -17, 2**40),
        ("PUBLISH", "traverse:node:n1", b"\x00\r\nbinary\xff"),
        ("SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"),
        ("SET", "big", "x" * 100_000),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(command):
    from redis.asyncio.connection import Connection

    assert sessions.pack_commands([command]) == b"".join(Connection().pack_commands([command]))


@pytest.mark.parametrize("arg", [None, True, 1.5, ["a"]])
def test_an_argument_redis_cant_take_is_refused_before_anything_is_written(arg):
    with pytest.raises(TypeError):
        sessions.pack_commands([("SET", "k", arg)])
