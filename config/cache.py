"""Django's Redis cache with one client, and so one connection pool, per process.

Django keeps a cache object per context (asgiref's Local), and under Daphne each HTTP request's
sync code runs in a context and a thread of its own: every request that touched the cache (rate
limits, sessions' neighbours) built a new client with a new pool and opened a new Redis
connection, left open until the garbage collector found it (284 connections for 283 rate-limited
requests). redis-py's pools are thread-safe and start afresh in a forked child (Celery's
prefork workers), so the processes' one client serves every thread.

`incr` is one round trip instead of Django's two (EXISTS, then INCRBY): django-ratelimit's
decorators (the sign-in views) count each request with `add` and then `incr`. `hit` counts one
in a fixed window in one round trip (config.ratelimits). Both run as scripts Redis keeps (EVALSHA,
loaded again after a restart), not sent whole each time."""

from __future__ import annotations

import threading
from functools import cached_property

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from redis.commands.core import Script

_clients: dict[tuple, RedisCacheClient] = {}
_lock = threading.Lock()


# INCRBY where the key exists, else nil: Django's incr (ValueError for a missing key) in one trip.
_INCR_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then
    return redis.call('incrby', KEYS[1], ARGV[1])
end
return false
"""

# One more in the window KEYS[1]: {count, seconds left}. The first count makes the key with no
# expiry, and that is when the window starts (ARGV[1] seconds); checking for no expiry rather
# than count == 1 also mends a key left without one, so no count lasts forever.
_HIT = """
local count = redis.call('incr', KEYS[1])
local left = redis.call('ttl', KEYS[1])
if left < 0 then
    redis.call('expire', KEYS[1], ARGV[1])
    left = tonumber(ARGV[1])
end
return {count, left}
"""

_scripts: dict[str, Script] = {}


def _run(client, source: str, keys: list, args: list):
    """`source` run by its digest (EVALSHA), loaded on first use and again after Redis lost it."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = client.register_script(source)
    return script(keys=keys, args=args, client=client)


class RedisCache(DjangoRedisCache):
    def incr(self, key, delta=1, version=None):
        key = self.make_and_validate_key(key, version=version)
        client = self._cache.get_client(key, write=True)
        value = _run(client, _INCR_IF_EXISTS, [key], [delta])
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return value

    def hit(self, key, seconds: int, version=None) -> tuple[int, int]:
        """Count one in the window `key` (which starts at its first count and lasts `seconds`):
        (the count so far, the seconds left in the window). One round trip."""
        key = self.make_and_validate_key(key, version=version)
        client = self._cache.get_client(key, write=True)
        count, left = _run(client, _HIT, [key], [int(seconds)])
        return int(count), int(left)

    @cached_property
    def _cache(self) -> RedisCacheClient:
        # Django's RedisCache sets these in __init__; its type stubs don't declare them.
        servers, options = self._servers, self._options  # type: ignore[attr-defined]
        key = (tuple(servers), repr(sorted(options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._class(servers, **options)  # type: ignore[attr-defined]
        return client
