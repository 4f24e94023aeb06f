"""config.http.OneHopASGIHandler: Django under ASGI, with a request's sync work in one hop."""

from __future__ import annotations

import json

import pytest
from asgiref import sync
from asgiref.testing import ApplicationCommunicator

from config.http import OneHopASGIHandler

pytestmark = [pytest.mark.django_db(transaction=True)]


def scope(path: str, method: str = "GET", headers=()) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


async def serve(path: str, method: str = "GET", headers=(), body: bytes = b"", handler=None):
    """The handler's response: (status, headers, body)."""
    app = ApplicationCommunicator(handler or OneHopASGIHandler(), scope(path, method, headers))
    await app.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await app.receive_output(10)
    chunks = []
    while True:
        message = await app.receive_output(10)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await app.wait(10)
    return start["status"], {k.lower(): v for k, v in start["headers"]}, b"".join(chunks)


@pytest.fixture
def hops(monkeypatch):
    """How often a request crossed between the event loop and a thread, each way."""
    counts = {"to_thread": 0, "to_loop": 0}
    to_thread, to_loop = sync.SyncToAsync.__call__, sync.AsyncToSync.__call__

    async def counted_to_thread(self, *args, **kwargs):
        counts["to_thread"] += 1
        return await to_thread(self, *args, **kwargs)

    def counted_to_loop(self, *args, **kwargs):
        counts["to_loop"] += 1
        return to_loop(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted_to_thread)
    monkeypatch.setattr(sync.AsyncToSync, "__call__", counted_to_loop)
    return counts


@pytest.mark.asyncio
async def test_a_page_through_every_middleware_crosses_to_its_thread_three_times(hops):
    """request_started, the middleware chain with the view, and the response's close. Django's
    own handler crossed eight times for the same page, and back to the loop once."""
    status, headers, body = await serve("/accounts/login/")
    assert status == 200 and b"<form" in body
    # What the middleware adds, in sync mode: CSP, clickjacking, the CSRF cookie.
    assert b"content-security-policy" in headers and headers[b"x-frame-options"] == b"DENY"
    assert hops == {"to_thread": 3, "to_loop": 0}


@pytest.mark.asyncio
async def test_a_post_without_its_csrf_token_is_refused_by_the_sync_chain():
    status, _headers, body = await serve(
        "/accounts/login/",
        method="POST",
        headers=[(b"content-type", b"application/x-www-form-urlencoded")],
        body=b"username=a&password=b",
    )
    assert status == 403


@pytest.mark.asyncio
async def test_an_async_view_still_answers():
    """/healthz is async: Django runs it from the request's thread on the loop, and it reaches
    Redis (on the loop) and the database (back in a thread) from there."""
    status, _headers, body = await serve("/healthz")
    health = json.loads(body)
    assert health["redis"] is True and health["database"] is True
    # "draining" where an earlier test in this process began a drain
    assert (status, health["status"]) in ((200, "ok"), (503, "draining"))


@pytest.mark.asyncio
async def test_requests_one_after_another_reuse_a_request_thread():
    """Each request runs in a thread of its own (not the event loop's), and the next request
    takes a thread an earlier one ended with: Django's handler started a thread, and another
    to join it, for every request."""
    import threading

    from django.core.signals import request_started

    seen: list[threading.Thread] = []

    def record(**_kwargs):
        seen.append(threading.current_thread())

    request_started.connect(record)
    try:
        handler = OneHopASGIHandler()
        for _ in range(3):
            status, _headers, _body = await serve("/accounts/login/", handler=handler)
            assert status == 200
    finally:
        request_started.disconnect(record)
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert seen[0] is not threading.current_thread()


@pytest.mark.asyncio
async def test_the_icon_browsers_ask_for_by_default_leads_to_the_sites_icon():
    """Django admin and Swagger UI name no icon, so browsers asked for /favicon.ico: a 404 in
    the log on every admin page."""
    status, headers, _body = await serve("/favicon.ico")
    assert status == 301 and headers[b"location"].endswith(b"/favicon.svg")
