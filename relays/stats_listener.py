"""The relay stats listener: coturn's allocation events in, each relay's live allocations and
each grant's bytes out (`manage.py relay_stats`, one process beside the worker).

Every coturn with `redis-statsdb` pointing at RELAY_STATS_REDIS_URL publishes there
(relays.allocations). One listener counts at a time: `traffic` events are deltas, and two
listeners adding them would count every byte twice. The others wait on a Redis lock (redis-py's
Lock, in REDIS_URL) and take over within RELAY_STATS_LOCK_SECONDS when the active one stops.

On start, the listener subscribes first and then reads coturn's own status keys (coturn stores
each live allocation's last status under the channel's name), so allocations that began before
it count as live at once. Their bytes before that are counted when they end (total_traffic).
What was counted but not yet written when a listener dies is lost: at most
RELAY_STATS_FLUSH_SECONDS of traffic.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from redis.exceptions import LockError

from .allocations import AllocationBook, parse_event
from .services.traffic import grant_traffic_record, relay_load_record

logger = logging.getLogger("relays.stats")

LOCK_KEY = "relays:stats:listener"
PATTERN = "turn/*"
STATUS_KEYS = "turn/*/allocation/*/status"
REWRITE_SECONDS = 30.0  # every count is written again this often, whether or not it changed


def stats_redis_url() -> str:
    return settings.RELAY_STATS_REDIS_URL or settings.REDIS_URL


class StatsListener:
    def __init__(self, *, stop: threading.Event | None = None):
        self.stop = stop or threading.Event()
        self.book = AllocationBook()
        self.flush_every = settings.RELAY_STATS_FLUSH_SECONDS
        self.lock_seconds = settings.RELAY_STATS_LOCK_SECONDS
        self.written: dict[str, int] = {}
        self.rewritten_at = 0.0
        self.seen_since: set[str] = set()
        self.active = threading.Event()  # holds the lock and listens (tests wait on it)

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        main = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)
        backoff = 0.5
        while not self.stop.is_set():
            lock = main.lock(LOCK_KEY, timeout=self.lock_seconds, thread_local=False)
            try:
                if not lock.acquire(blocking=True, blocking_timeout=1.0):
                    continue
            except redis.RedisError as exc:
                logger.warning("relay stats: lock not taken (%s); again in %.1f s", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            logger.info("relay stats: listening on %s", _safe(stats_redis_url()))
            try:
                self._listen(lock)
                backoff = 0.5
            except (redis.RedisError, OSError) as exc:
                logger.warning("relay stats: %s; listening again in %.1f s", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                self.active.clear()
                try:
                    lock.release()
                except (LockError, redis.RedisError):
                    pass
        self._flush(force=True)
        connection.close()  # this thread's; the process may go on (tests run it in a thread)

    def _listen(self, lock) -> None:
        source = redis.Redis.from_url(stats_redis_url(), socket_timeout=10, decode_responses=True)
        pubsub = source.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(PATTERN)
            self._resume(source)
            self.active.set()
            flushed = renewed = time.monotonic()
            while not self.stop.is_set():
                message = pubsub.get_message(timeout=0.25)
                if message is not None and message.get("type") == "pmessage":
                    self.handle(message["channel"], message["data"])
                now = time.monotonic()
                if now - flushed >= self.flush_every:
                    self._flush()
                    flushed = now
                if now - renewed >= self.lock_seconds / 3:
                    lock.reacquire()  # LockError when another listener took over: stop here
                    renewed = now
        finally:
            pubsub.close()
            source.close()

    def _resume(self, source: redis.Redis) -> None:
        now = time.time()
        for key in source.scan_iter(match=STATUS_KEYS, count=1000):
            value = source.get(key)  # str: decode_responses
            event = parse_event(str(key), str(value or ""))
            if event is not None:
                self.book.resume(event, now=now)
                self.seen_since.add(event.relay_key)

    # --- one message, one flush ---------------------------------------------------------------
    def handle(self, channel: str, data: str) -> None:
        event = parse_event(channel, data)
        if event is None:
            return
        self.book.apply(event, now=time.time())
        self.seen_since.add(event.relay_key)

    def _flush(self, *, force: bool = False) -> None:
        now = time.time()
        self.book.expire(now=now)
        counts = self.book.live_counts(now=now)
        rewrite = force or now - self.rewritten_at >= REWRITE_SECONDS
        changed = {
            key
            for key in set(counts) | set(self.written)
            if counts.get(key, 0) != self.written.get(key)
        }
        relays = self.seen_since | changed
        if rewrite:
            relays |= set(self.book.seen)
            self.rewritten_at = now
        pending = self.book.take_pending()
        close_old_connections()  # a long-lived process: a connection the server closed is replaced
        try:
            if relays:
                relay_load_record(
                    counts=counts, relays=relays, heard=self.seen_since, now=timezone.now()
                )
                for key in relays:
                    self.written[key] = counts.get(key, 0)
                self.seen_since = set()
            grant_traffic_record(pending=pending, now=timezone.now())
        except Exception:
            logger.exception("relay stats: not written; trying again with the next")
            self.book.give_back(pending)


def _safe(url: str) -> str:
    """A Redis URL without its password (for the log)."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
