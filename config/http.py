"""Django's ASGI handler, with a request's sync work in one hop to a reused thread.

Django's own ASGI handler runs its middleware in async mode wherever a middleware can, and
adapts between the two modes wherever they meet. Every middleware here is sync, or both
(MiddlewareMixin), and so are the views, so a request went from the event loop to its thread
(the sync middleware), back to the loop (async_to_sync, for the async-capable ones below it),
to the thread again for each MiddlewareMixin hook and CSRF's process_view, and once more for
the view: a sign-in page crossed to a thread eight times and back to the loop once, each a
wake-up of the other thread. Here the middleware chain is
built in sync mode (as under WSGI) and a request crosses once: request_started, the chain
and the view, then the response's close (three hops in all, counted by
tests/test_http_handler.py). An async view still works: Django runs it with async_to_sync from
the request's thread (only /healthz is one).

Each request still has a thread to itself (ThreadSensitiveContext), so a slow query holds up
no other request, but it is one that an earlier request ended with: Django's handler started
a thread for every request, and one more to join it.

Through one Daphne process (benchmarks/assignment.py, four keep-alive connections): a trivial
JSON view went from 377 to 578 requests per second with the one hop, and to 759 with the
threads reused.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler

IDLE_THREADS = 32  # request threads kept for the next requests (more are ended)


class OneHopASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)  # not ASGIHandler's: it builds the chain in async mode
        self.load_middleware(is_async=False)
        self._idle: list[ThreadPoolExecutor] = []  # touched on the event loop only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django serves HTTP only, not {scope['type']}.")
        # A thread of its own for each request, as Django's handler gives it, but a thread that
        # an earlier request ended with rather than a new one (Django's started one, and one
        # more to join it, for every request).
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, "http-request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < IDLE_THREADS:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def get_response_async(self, request):
        # BaseHandler.get_response: the URLconf, the chain, the request's closers, and the log
        # line for a 4xx/5xx, all in the request's thread (ThreadSensitiveContext).
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_http_application() -> OneHopASGIHandler:
    """django.core.asgi.get_asgi_application, with this handler."""
    import django

    django.setup(set_prefix=False)
    return OneHopASGIHandler()
