"""Django's Redis cache with one client, and so one connection pool, per process.

Django keeps a cache object per context (asgiref's Local), and under Daphne each HTTP request's
sync code runs in a context and a thread of its own: every request that touched the cache (rate
limits, sessions' neighbours) built a new client with a new pool and opened a new Redis
connection, left open until the garbage collector found it (284 connections for 283 rate-limited
requests). redis-py's pools are thread-safe and start afresh in a forked child (Celery's
prefork workers), so the processes' one client serves every thread.

`incr` is one round trip instead of Django's two (EXISTS, then INCRBY): django-ratelimit counts
every rate-limited request with `add` and then `incr`, so each issue of relay credentials made
three round trips to Redis for its count, and now makes two."""

from __future__ import annotations

import threading
from functools import cached_property

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient

_clients: dict[tuple, RedisCacheClient] = {}
_lock = threading.Lock()


# INCRBY where the key exists, else nil: Django's incr (ValueError for a missing key) in one trip.
_INCR_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then
    return redis.call('incrby', KEYS[1], ARGV[1])
end
return false
"""


class RedisCache(DjangoRedisCache):
    def incr(self, key, delta=1, version=None):
        key = self.make_and_validate_key(key, version=version)
        client = self._cache.get_client(key, write=True)
        value = client.eval(_INCR_IF_EXISTS, 1, key, delta)
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return value

    @cached_property
    def _cache(self) -> RedisCacheClient:
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._class(self._servers, **self._options)
        return client
