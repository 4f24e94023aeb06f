"""The health endpoint of one server process, for the load balancer in front of several.

GET /healthz answers 200 while this process takes new sockets and reaches Redis and the
database, and 503 (with the reason) once it is draining (shutting down: its sockets were told to
reconnect elsewhere) or can't reach either. nginx uses it to take a process out of the upstream
(deploy/nginx/traverse.conf); it says nothing secret, so it needs no sign-in.
"""

from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .hub import process_draining, process_relayed_at_once, process_sockets
from .presence import redis_for_loop


def _database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


async def _redis_answers() -> bool:
    try:
        return bool(await asyncio.wait_for(redis_for_loop().ping(), 2.0))
    except Exception:
        return False


@never_cache
@require_GET
async def health(request):
    redis_ok = await _redis_answers()
    database_ok = await database_sync_to_async(_database_answers)()
    if process_draining():
        status = "draining"
    elif not (redis_ok and database_ok):
        status = "degraded"
    else:
        status = "ok"
    return JsonResponse(
        {
            "status": status,
            "sockets": process_sockets(),
            "relayedAtOnce": process_relayed_at_once(),
            "redis": redis_ok,
            "database": database_ok,
        },
        status=200 if status == "ok" else 503,
    )
