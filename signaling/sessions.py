"""Device sessions: the numbered, replayable stream of frames the server sends to one page.

Every socket starts a session (docs/signaling.md, "Device sessions"). Each frame for it has a
`seq`, counted per session across reconnects, and the last REPLAY_FRAMES frames are kept in
Redis. A page whose socket dropped resumes the session on a new socket and is sent what it
missed, in order.

Who numbers a frame:
- While a socket holds the session, its consumer does (it owns the session): it numbers each
  frame, sends it, and keeps it in Redis behind the send (`session_store`, pipelined, not
  waited for). Frames from peers on the same process reach it directly (hub.py); frames from
  other processes and from Celery are forwarded to it by `session_push`, unnumbered, through
  its process's pub/sub channel. No frame waits for a Redis round trip before it is sent: that
  round trip was the whole gap to a bare relay (issue 8).
- While no socket holds it (the grace window), `session_push` numbers and keeps frames in
  Redis, and the next socket to resume it continues from there.
- A frame for a session whose process no longer listens (it died, or its subscriber is
  reconnecting) waits in the session's inbox, for the next owner.

An owner that died had sent frames it never stored: the page reports them in its lastSeq, and
the resume carries on from there. An owner whose session was resumed elsewhere while its own
socket stayed open hears so (`!moved`); what it stored too late is refused and sent on to the
new owner, unless the page already had it.

A session whose socket closed is kept for the grace window (SIGNALING_GRACE_SECONDS) and then
expires; pushes to an expired session are dropped.

Keys: `traverse:sess:<id>` (hash: user, channel, seq, dseq while away, aseq = the lastSeq of the
last resume), `traverse:sess:<id>:out` (sorted set of "<seq>:<frame without seq>", scored by seq)
and `traverse:sess:<id>:in` (list of forwarded frames waiting for an owner).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
import weakref
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

REPLAY_FRAMES = 256
# A live session (its socket is open) outlives any call; it is shortened to the grace window
# when the socket closes.
LIVE_TTL_SECONDS = 24 * 3600

# Frames from anyone but the session's owner. ARGV: text, replay frames, delivery header, limit.
_PUSH = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local channel = redis.call('HGET', KEYS[1], 'channel') or ''
local limit = tonumber(ARGV[4])
if channel ~= '' then
  local node = string.match(channel, '^([^!]*)!') or channel
  local message = ARGV[3] .. '\n0\n' .. ARGV[1]
  if redis.call('PUBLISH', 'traverse:node:' .. node, message) > 0 then return {-2, channel} end
  local waiting = redis.call('LLEN', KEYS[3])
  if (limit > 0 and waiting >= limit) or waiting >= tonumber(ARGV[2]) then return {-1, ''} end
  redis.call('RPUSH', KEYS[3], message)
  redis.call('EXPIRE', KEYS[3], math.max(redis.call('TTL', KEYS[1]), 1))
  return {-3, channel}
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
if limit > 0 then
  local away = tonumber(redis.call('HGET', KEYS[1], 'dseq') or seq)
  if seq - away > limit then return {-1, ''} end
end
redis.call('HSET', KEYS[1], 'seq', seq)
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seq - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[2], math.max(redis.call('TTL', KEYS[1]), 1))
return {seq, ''}
"""

# The owners' stores, any number in one call: each owner keeps a frame it numbered and sent.
# KEYS: each store's session hash and its sorted set of frames. ARGV: replay frames, then for
# each store its channel, seq, text and lifetime (0: leave it). One code per store: 1 kept;
# 0 refused (the session moved: send it on); -1 refused, and the page already had it (it
# resumed elsewhere past it); -2 the session is gone (Redis lost it).
_STORE = r"""
local keep = tonumber(ARGV[1])
local codes = {}
for i = 1, #KEYS / 2 do
  local sess, kept, a = KEYS[2 * i - 1], KEYS[2 * i], 4 * i - 2
  local seq = tonumber(ARGV[a + 1])
  if redis.call('EXISTS', sess) == 0 then
    codes[i] = -2
  elseif redis.call('HGET', sess, 'channel') ~= ARGV[a] then
    codes[i] = (seq <= tonumber(redis.call('HGET', sess, 'aseq') or '0')) and -1 or 0
  else
    if seq > tonumber(redis.call('HGET', sess, 'seq') or '0') then
      redis.call('HSET', sess, 'seq', seq)
    end
    redis.call('ZADD', kept, seq, seq .. ':' .. ARGV[a + 2])
    redis.call('ZREMRANGEBYSCORE', kept, '-inf', seq - keep)
    if tonumber(ARGV[a + 3]) > 0 then redis.call('EXPIRE', sess, ARGV[a + 3]) end
    redis.call('EXPIRE', kept, math.max(redis.call('TTL', sess), 1))
    codes[i] = 1
  end
end
return codes
"""

# ARGV: user, new channel, lastSeq, lifetime, replay frames, the `!moved` header.
_ADOPT = r"""
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return {-1} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local last = tonumber(ARGV[3])
if last > seq then
  -- sent by an owner that died before it kept them: the page has them, carry on from there
  if last > seq + tonumber(ARGV[5]) then return {-2} end
  seq = last
  redis.call('HSET', KEYS[1], 'seq', seq)
end
if last < seq then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #oldest == 0 or tonumber(oldest[2]) > last + 1 then return {-3} end
end
local old = redis.call('HGET', KEYS[1], 'channel') or ''
redis.call('HSET', KEYS[1], 'channel', ARGV[2], 'aseq', last)
redis.call('HDEL', KEYS[1], 'dseq')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if old ~= '' and old ~= ARGV[2] then
  local node = string.match(old, '^([^!]*)!') or old
  redis.call('PUBLISH', 'traverse:node:' .. node, ARGV[6] .. '\n0\n' .. old)
end
local frames = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. last, '+inf')
local inbox = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return {seq, old, frames, inbox}
"""

_DETACH = r"""
if redis.call('HGET', KEYS[1], 'channel') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'channel', '', 'dseq', redis.call('HGET', KEYS[1], 'seq') or '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""

_OPEN = r"""
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'channel', ARGV[2], 'seq', 0)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# The frames that waited while this process's subscriber was away.
_TAKE_INBOX = r"""
local inbox = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return inbox
"""


_SCRIPTS = (_OPEN, _PUSH, _STORE, _ADOPT, _DETACH, _TAKE_INBOX)


def session_keys(session: str) -> list[str]:
    return [
        f"traverse:sess:{session}",
        f"traverse:sess:{session}:out",
        f"traverse:sess:{session}:in",
    ]


def new_session_id() -> str:
    return "s-" + secrets.token_urlsafe(16)


# Server frame ids: unique without a system call each (uuid4 reads os.urandom, which was 7% of
# the CPU of a relayed frame): a random prefix per process, then a counter.
_ID_PREFIX = secrets.token_hex(6) + "-"
_ids = itertools.count(1)


def frame_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):x}"


# json.dumps with separators builds an encoder per call: one, shared.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def frame_text(mtype: str, *, call=None, body=None, ref=None) -> str:
    """A server frame without its seq (added when it is sent): see protocol.envelope."""
    out: dict = {"v": 1, "type": mtype, "id": frame_id(), "body": body or {}}
    if call is not None:
        out["call"] = str(call)
    if ref is not None:
        out["ref"] = ref
    return compact_json(out)


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
    """A new session, held by `channel`. Tried twice: the first try after a Redis restart may
    find the connection dead (opening is idempotent)."""
    for attempt in (1, 2):
        try:
            await _pipelined(
                redis, _OPEN, session_keys(session), user_id, channel, LIVE_TTL_SECONDS
            )
            return
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if attempt == 2:
                raise


def node_channel(node: str) -> str:
    """The Redis pub/sub channel of one server process: frames for the sessions it holds."""
    return f"traverse:node:{node}"


# The frame kind of the notice a process gets when one of its sessions was resumed elsewhere.
MOVED = "!moved"


def delivery_header(session: str, frame: str, call: str | None) -> str:
    """What a process needs to hand a forwarded frame to its socket (see hub.py)."""
    return f"{session}|{frame}|{call or ''}"


def parse_forwarded(data: bytes) -> tuple[str, str, str | None, str]:
    """(session, frame, call, text) of a forwarded frame: "<header>\n<seq>\n<text>". Raises
    ValueError when it isn't one."""
    head, _, text = data.decode().split("\n", 2)
    session, frame, call = head.split("|", 2)
    return session, frame, call or None, text


logger = logging.getLogger(__name__)

_shas: dict[str, str] = {}


def _sha(source: str) -> str:
    sha = _shas.get(source)
    if sha is None:
        sha = _shas[source] = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 (Redis's id)
    return sha


# A stored frame's reply ("kept", or "refused: the session moved") is read with the next
# exchange, or after this long when none comes: reading it at once woke the process once more
# for every frame (0.15-0.2 ms of CPU per frame at light load, issue 8).
LAZY_REPLY_SECONDS = 1.0
# Or once this many replies are owed: reading replies holds the loop up, so they are read
# a few at a time. Read 1,000 at once, they stalled it ~8 ms every 200 ms at 5,000 msg/s (the
# p99 of a relayed frame was that stall, issue 8).
LAZY_REPLIES_MAX = 16
# Under load (the last write was under LAZY_BUSY_SECONDS ago), stores wait this long for
# others to go with them: one write and one script call in Redis for many frames, not one for
# each turn of the loop (Redis's CPU per relayed frame halved, issue 8). At light load they go
# at the end of the turn: a timer would wake the process once more for each frame. A call
# someone waits for doesn't wait for it (_wake).
LAZY_WRITE_SECONDS = 0.002
LAZY_BUSY_SECONDS = 0.02
STORES_PER_CALL = 64  # at most, so that one script call holds Redis up for well under 1 ms


class _AutoPipeline:
    """Script calls to one Redis, made while another is under way, go together as one
    pipeline once it is back (as Nagle's algorithm, with no timer): one round trip, one write
    and one read for many frames. Measured here (issue 8): a push alone costs 102 us of Python
    and 38 us of Redis CPU; in pipelines of 10, 25 + 12 us.

    A call made while nothing is under way goes at once, in its caller's task. Each call gets
    its own result or error, and calls run in the order they were made (one exchange at a
    time, on one connection). The owner's stores, which nobody waits for (`lazy`), go at the
    end of the loop's turn, or under load after LAZY_WRITE_SECONDS so that others go with
    them; the stores queued side by side go as one script call (up to STORES_PER_CALL). When
    nothing else is under way they are written then, with no task (`_write_lazy`). Their
    replies are read later (LAZY_REPLY_SECONDS, or once LAZY_REPLIES_MAX are owed), with the
    next exchange's: until then the connection is not read at all, so those replies don't
    wake the process.

    The connection is its own, with no per-read timeout (that made redis-py start a task and a
    timer for every write): each exchange has one deadline, REDIS_SOCKET_TIMEOUT. Each new
    connection loads the scripts first, so a restarted Redis answers no NOSCRIPT."""

    def __init__(self, redis: aioredis.Redis):
        pool = redis.connection_pool
        # No retries of its own either: a failed exchange fails its calls at once, and the
        # callers know which of them may be tried again.
        self.connection = pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None, "retry": Retry(NoBackoff(), 0)}
        )
        self.deadline = float(settings.REDIS_SOCKET_TIMEOUT)
        self.pending: list[tuple[str, list, Any, Any, bool]] = []
        self.unread: list[tuple[str, list, Any, Any, bool]] = []
        self.busy = False
        self.paused = False  # reading, while only lazy replies are due
        self.overdue = False
        self.reload = False  # load the scripts before the next exchange
        self.timer: asyncio.TimerHandle | None = None
        self.writer: asyncio.Handle | None = None  # the lazy write, while it waits
        self.written = 0.0  # when the last lazy write went (the loop's clock)

    def store(self, keys: list[str], args: tuple, waiter) -> None:
        """Queue an owner's store, which nobody waits for: it goes with the next pipeline, in
        one script call with the stores queued beside it, and its reply is read lazily. Its
        waiter still gets its code (or the error): see _Stores."""
        last = self.pending[-1] if self.pending else None
        if last is None or last[0] is not _STORE or len(last[3].waiters) >= STORES_PER_CALL:
            last = (_STORE, [], [REPLAY_FRAMES], _Stores(), True)
            self.pending.append(last)
        last[1].extend(keys)
        last[2].extend(args)
        last[3].waiters.append(waiter)
        self._wake()

    def _wake(self, now: bool = False) -> None:
        if not self.busy:
            self.busy = True
            loop = asyncio.get_running_loop()
            if now or loop.time() - self.written > LAZY_BUSY_SECONDS:
                self.writer = loop.call_soon(self._write_lazy)
            else:
                self.writer = loop.call_later(LAZY_WRITE_SECONDS, self._write_lazy)
        elif now and self.writer is not None:  # someone waits: don't keep them waiting
            self.writer.cancel()
            self.writer = asyncio.get_running_loop().call_soon(self._write_lazy)

    def _write_lazy(self) -> None:
        """At the end of this turn of the loop: when every queued call is lazy and the connection
        is up and keeps up, write them here, with no task, no deadline and no read (most
        stores, one frame at a time at light load; a task per frame cost ~10% of its CPU).
        Anything else goes through the drain task."""
        self.writer = None
        connection = self.connection
        if (
            self.overdue
            or self.reload
            or not connection.is_connected
            or _transport(connection).is_closing()  # the drain task tells its callers
            or len(self.unread) + len(self.pending) >= LAZY_REPLIES_MAX
            or not all(item[4] for item in self.pending)
            or _transport(connection).get_write_buffer_size()  # Redis is behind: wait for it
        ):
            asyncio.get_running_loop().create_task(self._drain())
            return
        batch, self.pending = self.pending, []
        self.busy = False
        self.written = asyncio.get_running_loop().time()
        _transport(connection).write(pack_commands(_script_calls(batch)))
        self._owe(batch)

    def _owe(self, batch: list) -> None:
        """Replies left unread: the connection isn't read until they are due."""
        self.unread.extend(batch)
        if self.unread and not self.paused:
            _transport(self.connection).pause_reading()
            self.paused = True
            if self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(LAZY_REPLY_SECONDS, self._due)

    def _due(self) -> None:
        self.timer = None
        self.overdue = True
        self._wake(now=True)

    async def call(self, source: str, keys: list[str], args: tuple):
        if self.busy:
            future = asyncio.get_running_loop().create_future()
            self.pending.append((source, keys, args, future, False))
            self._wake(now=True)
            return await future
        self.busy = True
        try:
            (result,) = await self._execute([(source, keys, args, None, False)])
        finally:
            if self.pending or self.overdue:
                asyncio.get_running_loop().create_task(self._drain())
            else:
                self.busy = False
        if isinstance(result, Exception):
            raise result
        return result

    async def _drain(self) -> None:
        batch: list = []
        try:
            while self.pending or self.overdue:
                due, self.overdue = self.overdue, False
                batch, self.pending = self.pending, []
                try:
                    results = await self._execute(batch, due)
                except Exception as exc:  # Redis unreachable: every call in it fails
                    _fail(batch, exc)
                    continue
                for item, result in zip(batch, results, strict=True):
                    _resolve(item[3], result)
                batch = []
        finally:
            self.busy = False
            for item in batch + self.pending:  # cancelled: the loop is closing
                item[3].cancel()
            self.pending = []

    async def _execute(self, batch: list, due: bool = False) -> list:
        """Run a batch; returns each call's result (an exception for its own error), None
        for lazy calls whose reply is left for later. `due`: read the lazy replies now."""
        try:
            async with asyncio.timeout(self.deadline):
                results = await self._exchange(batch, due=due)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # SCRIPT FLUSH: load them, run those again
                    await self._load_scripts()
                    again = await self._exchange([batch[i][:4] + (False,) for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
                return results
        except BaseException as exc:
            # Cut off mid-exchange (an error, a cancelled caller): replies may still be on
            # the way, so the next exchange starts on a fresh connection, and the replies
            # still owed on this one won't come.
            failure: Exception = RedisConnectionError("the exchange with Redis was cut off")
            if isinstance(exc, TimeoutError):
                failure = RedisTimeoutError("Redis did not answer a pipeline in time")
            elif isinstance(exc, Exception):
                failure = exc
            unread, self.unread, self.paused = self.unread, [], False
            _fail(unread, failure)
            await self.connection.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise failure from None
            raise

    async def _load_scripts(self) -> None:
        await self._exchange([("SCRIPT", "LOAD", source) for source in _SCRIPTS], raw=True)

    async def _exchange(self, batch: list, raw: bool = False, due: bool = False) -> list:
        connection = self.connection
        if not connection.is_connected:
            self.paused = False
            lost, self.unread = self.unread, []
            _fail(lost, RedisConnectionError("the connection to Redis was lost"))
            await connection.connect()
            self.reload = not raw
        if self.reload and not raw:
            self.reload = False
            await self._load_scripts()
        if raw:
            commands = list(batch)
            awaited = len(commands)
        else:
            commands = _script_calls(batch)
            # Read up to the last call someone waits for; lazy calls after it stay unread.
            awaited = max((n + 1 for n, item in enumerate(batch) if not item[4]), default=0)
        if commands:
            await connection.send_packed_command(pack_commands(commands), False)
        if awaited or (self.unread and (due or len(self.unread) >= LAZY_REPLIES_MAX)):
            if self.paused:
                _transport(connection).resume_reading()
                self.paused = False
            earlier, self.unread = self.unread, []
            for n, item in enumerate(earlier):
                try:
                    result = await self._reply(connection)
                except BaseException:
                    # Still owed: they fail with this exchange (_execute), rather than wait
                    # for replies that won't come (they did: a store's future never resolved).
                    self.unread = earlier[n:] + self.unread
                    raise
                if isinstance(result, NoScriptError):  # SCRIPT FLUSH: again, once loaded
                    self.pending.append(item)
                    self.overdue = self.reload = True
                else:
                    _resolve(item[3], result)
        results: list = [await self._reply(connection) for _ in range(awaited)]
        if not raw:
            self._owe(batch[awaited:])
            results += [None] * (len(batch) - awaited)
        return results

    @staticmethod
    async def _reply(connection):
        try:
            return await connection.read_response()
        except ResponseError as exc:  # this call's own error; the replies after it follow
            return exc


def _resp_bulk(arg) -> bytes:
    if isinstance(arg, str):
        data = arg.encode()
    elif isinstance(arg, bytes):
        data = arg
    elif isinstance(arg, int) and not isinstance(arg, bool):
        data = b"%d" % arg
    else:
        raise TypeError(f"a Redis argument must be str, bytes or int, not {type(arg).__name__}")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_commands(commands) -> bytes:
    """Commands in Redis's wire format (RESP): what redis-py's pack_commands writes for these
    arguments, without its general-purpose encoder (6% of a relayed frame's CPU, issue 8)."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        out.extend(_resp_bulk(arg) for arg in command)
    return b"".join(out)


def _script_calls(batch: list) -> list[tuple]:
    """A batch's calls as Redis commands: each script by its SHA1 (loaded on connecting)."""
    return [("EVALSHA", _sha(source), len(keys), *keys, *args) for source, keys, args, *_ in batch]


def _transport(connection) -> asyncio.Transport:
    """The socket under a redis-py connection (it has no API for pausing reads)."""
    return connection._writer.transport  # noqa: SLF001


class _Stores:
    """The stores that go in one script call; its reply has a code for each. Each store has a
    waiter: a future (session_store), or a function called only when the frame was not kept
    (session_keep: no future and no callback for the frames that were, nearly all)."""

    __slots__ = ("settled", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future | Callable[[int | BaseException], None]] = []
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, codes: list) -> None:
        self.settled = True
        for waiter, code in zip(self.waiters, codes, strict=True):
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(code)
            elif code != 1:
                _tell(waiter, code)

    def set_exception(self, exc: BaseException) -> None:
        self.settled = True
        for waiter in self.waiters:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(exc)
            else:
                _tell(waiter, exc)

    def cancel(self) -> None:  # the loop is closing
        self.settled = True
        for waiter in self.waiters:
            if isinstance(waiter, asyncio.Future):
                waiter.cancel()


def _tell(unkept: Callable[[int | BaseException], None], outcome: int | BaseException) -> None:
    try:
        unkept(outcome)
    except Exception:  # one owner's failure must not cost the others their replies
        logger.exception("signaling: handling a store's reply failed")


def _resolve(future: asyncio.Future | _Stores | None, result) -> None:
    if future is None or future.done() or result is None:
        return  # a lazy call's reply comes later; or its caller stopped waiting
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _fail(items: list, exc: BaseException) -> None:
    for item in items:
        if item[3] is not None and not item[3].done():
            item[3].set_exception(exc)


_pipelines: weakref.WeakKeyDictionary[aioredis.Redis, _AutoPipeline] = weakref.WeakKeyDictionary()


def _pipeline(redis: aioredis.Redis) -> _AutoPipeline:
    pipeline = _pipelines.get(redis)
    if pipeline is None:
        pipeline = _pipelines[redis] = _AutoPipeline(redis)
    return pipeline


async def _pipelined(redis: aioredis.Redis, source: str, keys: list[str], *args):
    return await _pipeline(redis).call(source, keys, args)


async def close_pipeline(redis: aioredis.Redis) -> None:
    """Close the connection of this client's pipeline (tests, before their event loop ends)."""
    pipeline = _pipelines.pop(redis, None)
    if pipeline is not None:
        for handle in (pipeline.timer, pipeline.writer):
            if handle is not None:
                handle.cancel()
        await pipeline.connection.disconnect()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def session_push(
    redis: aioredis.Redis,
    *,
    session: str,
    text: str,
    publish: str,
    limit: int = 0,
) -> tuple[int, str]:
    """A frame for a session this process doesn't hold (see the module header). Returns
    (seq, "") when it was numbered and kept for a device that is away; (-2, channel) when it was
    forwarded to the process that holds the session; (-3, channel) when it waits in the inbox
    (nobody listens for that process); (0, "") when the session is gone; (-1, "") when `limit`
    > 0 and that many frames already wait for the device (the frame is not kept).

    `publish` is the frame's delivery_header."""
    code, channel = await _pipelined(
        redis, _PUSH, session_keys(session), text, REPLAY_FRAMES, publish, limit
    )
    return int(code), _text(channel)


def session_store(
    redis: aioredis.Redis, *, session: str, channel: str, seq: int, text: str, ttl: int = 0
) -> asyncio.Future:
    """The owner keeps a frame it sent (not waited for: it goes with the next pipeline). The
    future's result is 1 (kept), 0 (the session moved: send the frame on), -1 (moved, and the
    page already had it) or -2 (the session is gone: a restarted Redis lost it)."""
    future = asyncio.get_running_loop().create_future()
    _pipeline(redis).store(session_keys(session)[:2], (channel, seq, text, ttl), future)
    return future


def session_keep(
    redis: aioredis.Redis,
    *,
    session: str,
    channel: str,
    seq: int,
    text: str,
    ttl: int,
    unkept: Callable[[int | BaseException], None],
) -> None:
    """session_store for the owner's hot path: `unkept` is called with the code when the frame
    was not kept (0, -1, -2), or with the error when the store failed; not at all when it was
    kept. Saves each frame a future and a callback of the loop (issue 8)."""
    _pipeline(redis).store(session_keys(session)[:2], (channel, seq, text, ttl), unkept)


async def session_adopt(
    redis: aioredis.Redis, *, session: str, user_id: int, channel: str, last_seq: int
) -> tuple[int, str, list[tuple[int, str]], list[bytes]]:
    """Move a session to a new socket. Returns (its seq, its old channel, the stored frames
    after last_seq, the forwarded frames that wait in its inbox), or (a negative code, "", [],
    []) when it can't be resumed: -1 not this user's (or gone), -2 lastSeq far ahead of the
    session, -3 too far behind (the frames were dropped)."""
    result = await _pipelined(
        redis,
        _ADOPT,
        session_keys(session),
        str(user_id),
        channel,
        last_seq,
        LIVE_TTL_SECONDS,
        REPLAY_FRAMES,
        delivery_header(session, MOVED, None),
    )
    code = int(result[0])
    if code < 0:
        return code, "", [], []
    return code, _text(result[1]), [stored_frame(e) for e in result[2]], list(result[3])


async def session_take_inbox(redis: aioredis.Redis, *, session: str) -> list[bytes]:
    return await _pipelined(redis, _TAKE_INBOX, session_keys(session))


async def session_detach(redis: aioredis.Redis, *, session: str, channel: str) -> None:
    """The socket closed: the session is kept for the grace window (unless another socket has
    adopted it meanwhile). It goes after the owner's stores (one pipeline, in order), so the
    session's seq in Redis is the last one sent."""
    await _pipelined(redis, _DETACH, session_keys(session), channel, grace_ttl())


async def session_forget(redis: aioredis.Redis, *, session: str) -> None:
    await redis.delete(*session_keys(session))
