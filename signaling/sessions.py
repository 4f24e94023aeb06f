"""Device sessions: the numbered, replayable stream of frames the server sends to one page.

Every socket starts a session (docs/signaling.md, "Device sessions"). Each frame for it is pushed
into Redis first: one Lua call numbers it (`seq`, per session, across reconnects) and keeps the
last REPLAY_FRAMES of them, then the frame goes to the session's current channel. A page whose
socket dropped resumes the session on a new socket and is sent what it missed, in order.

Anyone can push to a session (the device's own consumer, a peer's consumer, a Celery task), so
frames can reach the consumer out of order; the consumer delivers in `seq` order by reading the
gap from Redis (`frames_after`). A session whose socket closed is kept for the grace window
(SIGNALING_GRACE_SECONDS) and then expires; pushes to an expired session are dropped.

Keys: `traverse:sess:<id>` (hash: user, channel, seq) and `traverse:sess:<id>:out` (sorted set
of "<seq>:<frame without seq>", scored by seq).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
import weakref

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

REPLAY_FRAMES = 256
# A live session (its socket is open) outlives any call; it is shortened to the grace window
# when the socket closes.
LIVE_TTL_SECONDS = 24 * 3600

_PUSH = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local channel = redis.call('HGET', KEYS[1], 'channel') or ''
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
if channel == '' and tonumber(ARGV[5]) > 0 then
  local away = tonumber(redis.call('HGET', KEYS[1], 'dseq') or seq)
  if seq - away > tonumber(ARGV[5]) then return {-1, ''} end
end
redis.call('HSET', KEYS[1], 'seq', seq)
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seq - tonumber(ARGV[2]))
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
redis.call('EXPIRE', KEYS[2], math.max(redis.call('TTL', KEYS[1]), 1))
if ARGV[4] ~= '' and channel ~= '' then
  local node = string.match(channel, '^([^!]*)!') or channel
  redis.call('PUBLISH', 'traverse:node:' .. node, ARGV[4] .. '\n' .. seq .. '\n' .. ARGV[1])
end
return {seq, channel}
"""

_ADOPT = """
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return {-1} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local last = tonumber(ARGV[3])
if last > seq then return {-2} end
if last < seq then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #oldest == 0 or tonumber(oldest[2]) > last + 1 then return {-3} end
end
local old = redis.call('HGET', KEYS[1], 'channel') or ''
redis.call('HSET', KEYS[1], 'channel', ARGV[2])
redis.call('HDEL', KEYS[1], 'dseq')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local frames = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. last, '+inf')
return {seq, old, unpack(frames)}
"""

_DETACH = """
if redis.call('HGET', KEYS[1], 'channel') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'channel', '', 'dseq', redis.call('HGET', KEYS[1], 'seq') or '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def session_keys(session: str) -> list[str]:
    return [f"traverse:sess:{session}", f"traverse:sess:{session}:out"]


def new_session_id() -> str:
    return "s-" + secrets.token_urlsafe(16)


# Server frame ids: unique without a system call each (uuid4 reads os.urandom, which was 7% of
# the CPU of a relayed frame): a random prefix per process, then a counter.
_ID_PREFIX = secrets.token_hex(6) + "-"
_ids = itertools.count(1)


def frame_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):x}"


def frame_text(mtype: str, *, call=None, body=None, ref=None) -> str:
    """A server frame without its seq (added when it is sent): see protocol.envelope."""
    out: dict = {"v": 1, "type": mtype, "id": frame_id(), "body": body or {}}
    if call is not None:
        out["call"] = str(call)
    if ref is not None:
        out["ref"] = ref
    return json.dumps(out, separators=(",", ":"))


def with_seq(seq: int | None, text: str) -> str:
    """Put `seq` into a stored frame (a JSON object text) without parsing it again."""
    if seq is None:
        return text
    return f'{{"seq":{seq},{text[1:]}'


def stored_frame(entry: bytes | str) -> tuple[int, str]:
    """Split a sorted-set entry "<seq>:<frame>" into (seq, frame text with its seq)."""
    if isinstance(entry, bytes):
        entry = entry.decode()
    head, _, text = entry.partition(":")
    seq = int(head)
    return seq, with_seq(seq, text)


def grace_ttl() -> int:
    return int(settings.SIGNALING_GRACE_SECONDS) + 5


async def session_open(redis: aioredis.Redis, *, session: str, user_id: int, channel: str) -> None:
    keys = session_keys(session)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys[0], mapping={"user": str(user_id), "channel": channel, "seq": 0})
        pipe.expire(keys[0], LIVE_TTL_SECONDS)
        await pipe.execute()


def node_channel(node: str) -> str:
    """The Redis pub/sub channel of one server process: frames for the sessions it holds."""
    return f"traverse:node:{node}"


def delivery_header(session: str, frame: str, call: str | None) -> str:
    """What a process needs to hand a published frame to its socket (see hub.py)."""
    return f"{session}|{frame}|{call or ''}"


_shas: dict[str, str] = {}


def _sha(source: str) -> str:
    sha = _shas.get(source)
    if sha is None:
        sha = _shas[source] = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 (Redis's id)
    return sha


async def _script(redis: aioredis.Redis, source: str, keys: list[str], *args):
    """EVALSHA, loading the script once per Redis (a restarted Redis has forgotten it)."""
    try:
        return await redis.evalsha(_sha(source), len(keys), *keys, *args)
    except NoScriptError:
        return await redis.eval(source, len(keys), *keys, *args)


class _AutoPipeline:
    """Script calls to one Redis, made while another is under way, go together as one
    pipeline once it is back (as Nagle's algorithm, with no timer): one round trip, one write
    and one read for many frames. Measured here (issue 8): a push alone costs 102 us of Python
    and 38 us of Redis CPU; in pipelines of 10, 25 + 12 us.

    A call made while nothing is under way goes at once, in its caller's task: at light load a
    frame costs no more than a plain EVALSHA. Each call gets its own result or error, and calls
    run in the order they were made (one exchange at a time, on one connection).

    The connection is its own, with no per-read timeout (that made redis-py start a task and
    a timer for every write): the whole exchange has one deadline, REDIS_SOCKET_TIMEOUT."""

    def __init__(self, redis: aioredis.Redis):
        pool = redis.connection_pool
        self.connection = pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None}
        )
        self.deadline = float(settings.REDIS_SOCKET_TIMEOUT)
        self.pending: list[tuple[str, list, tuple, asyncio.Future]] = []
        self.busy = False

    async def call(self, source: str, keys: list[str], args: tuple):
        if self.busy:
            future = asyncio.get_running_loop().create_future()
            self.pending.append((source, keys, args, future))
            return await future
        self.busy = True
        try:
            (result,) = await self._execute([(source, keys, args, None)])
        finally:
            if self.pending:
                asyncio.get_running_loop().create_task(self._drain())
            else:
                self.busy = False
        if isinstance(result, Exception):
            raise result
        return result

    async def _drain(self) -> None:
        batch: list = []
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    results = await self._execute(batch)
                except Exception as exc:  # Redis unreachable: every call in it fails
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue  # its caller stopped waiting (a closed socket)
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        finally:
            self.busy = False
            for *_, future in batch + self.pending:  # cancelled: the loop is closing
                future.cancel()
            self.pending = []

    async def _execute(self, batch: list) -> list:
        try:
            async with asyncio.timeout(self.deadline):
                results = await self._exchange(batch)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # a restarted Redis has forgotten the scripts: load, run again
                    for source in {batch[i][0] for i in missing}:
                        await self._exchange([("SCRIPT", "LOAD", source)], raw=True)
                    again = await self._exchange([batch[i] for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
                return results
        except TimeoutError:
            await self.connection.disconnect(nowait=True)
            raise RedisTimeoutError("Redis did not answer a pipeline in time") from None
        except BaseException:
            # Cut off mid-exchange (an error, a cancelled caller): replies may still be on
            # the way, so the next exchange starts on a fresh connection.
            await self.connection.disconnect(nowait=True)
            raise

    async def _exchange(self, batch: list, raw: bool = False) -> list:
        connection = self.connection
        if not connection.is_connected:
            await connection.connect()
        if raw:
            commands = list(batch)
        else:
            commands = [
                ("EVALSHA", _sha(source), len(keys), *keys, *args)
                for source, keys, args, _ in batch
            ]
        await connection.send_packed_command(connection.pack_commands(commands), False)
        results: list = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as exc:  # this call's own error; the replies after it follow
                results.append(exc)
        return results


_pipelines: weakref.WeakKeyDictionary[aioredis.Redis, _AutoPipeline] = weakref.WeakKeyDictionary()


async def _pipelined(redis: aioredis.Redis, source: str, keys: list[str], *args):
    pipeline = _pipelines.get(redis)
    if pipeline is None:
        pipeline = _pipelines[redis] = _AutoPipeline(redis)
    return await pipeline.call(source, keys, args)


async def close_pipeline(redis: aioredis.Redis) -> None:
    """Close the connection of this client's pipeline (tests, before their event loop ends)."""
    pipeline = _pipelines.pop(redis, None)
    if pipeline is not None:
        await pipeline.connection.disconnect()


async def session_push(
    redis: aioredis.Redis,
    *,
    session: str,
    text: str,
    live: bool = False,
    publish: str = "",
    limit: int = 0,
) -> tuple[int, str]:
    """Number and keep one frame; returns (seq, the session's channel, "" while its socket is
    away), (0, "") when the session is gone, or (-1, "") when `limit` > 0 and that many frames
    already wait for a device that is away (the frame is then not kept).

    `live` (the session's own consumer) refreshes its lifetime. `publish` (a delivery_header)
    also publishes the frame to the process that holds the session's socket, in the same step,
    so frames reach each process in seq order."""
    seq, channel = await _pipelined(
        redis,
        _PUSH,
        session_keys(session),
        text,
        REPLAY_FRAMES,
        LIVE_TTL_SECONDS if live else 0,
        publish,
        limit,
    )
    if isinstance(channel, bytes):
        channel = channel.decode()
    return int(seq), channel


async def frames_after(redis: aioredis.Redis, *, session: str, after: int, upto: int):
    """The stored frames with after < seq <= upto, in order, as (seq, text)."""
    entries = await redis.zrangebyscore(session_keys(session)[1], f"({after}", upto)
    return [stored_frame(e) for e in entries if isinstance(e, bytes | str)]


async def session_adopt(
    redis: aioredis.Redis, *, session: str, user_id: int, channel: str, last_seq: int
) -> tuple[int, str, list[tuple[int, str]]]:
    """Move a session to a new socket. Returns (its seq, its old channel, the frames after
    last_seq), or (a negative code, "", []) when it can't be resumed: -1 not this user's (or
    gone), -2 lastSeq ahead of the session, -3 too far behind (the frames were dropped)."""
    result = await _script(
        redis, _ADOPT, session_keys(session), str(user_id), channel, last_seq, LIVE_TTL_SECONDS
    )
    code = int(result[0])
    if code < 0:
        return code, "", []
    old = result[1].decode() if isinstance(result[1], bytes) else result[1]
    return code, old, [stored_frame(e) for e in result[2:]]


async def session_detach(redis: aioredis.Redis, *, session: str, channel: str) -> None:
    """The socket closed: the session is kept for the grace window (unless another socket has
    adopted it meanwhile)."""
    await _script(redis, _DETACH, session_keys(session), channel, grace_ttl())


async def session_forget(redis: aioredis.Redis, *, session: str) -> None:
    await redis.delete(*session_keys(session))
