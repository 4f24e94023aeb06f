"""An integrator's product embeds calls: two of its users, each with a join ticket and no
session here, talk through a relay in the embed page, framed by a page on the integrator's own
origin; the page survives a dropped socket with its device token; a page on another origin
can't frame it, and a used ticket can't open it again."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from integrations.models import Integrator
from tests.conftest import loopback_relay
from tests.e2e.conftest import CONNECTED, sweep_through_worker, wait_until
from tests.integrations.test_api_keys import make_key

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))


class Host:
    """The integrator's own site: one page that frames the embed URL it is given."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                src = self.path.split("src=", 1)[1] if "src=" in self.path else ""
                from urllib.parse import unquote

                body = (
                    "<!doctype html><title>Acme</title><h1>Acme support</h1>"
                    f'<iframe id="call" src="{unquote(src)}" allow="camera; microphone" '
                    'width="900" height="640"></iframe>'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_two_end_users_talk_in_the_embed_page_framed_by_the_integrator(
    services, browser, coturn, e2e_figures
):
    from urllib.parse import quote

    base = services["base"]
    loopback_relay(coturn, "embed-relay", rig=True)
    assert sweep_through_worker() == {"embed-relay": "up"}
    key = make_key("users:write", "calls:write")
    host, stranger = Host(), Host()
    Integrator.objects.filter(slug="acme").update(allowed_origins=[host.origin])

    def api(path, body):  # as the integrator's server does: over HTTP, to the real server
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    for ext in ("u-1", "u-2"):
        api("/api/v1/users/", {"externalId": ext, "displayName": ext.upper()})
    call = api("/api/v1/calls/", {"participants": ["u-1", "u-2"]})

    def ticket(ext):
        return api("/api/v1/tickets/", {"user": ext, "call": call["id"]})["ticket"]

    pages, frames = [], []
    for ext in ("u-1", "u-2"):
        src = f"{base}/embed/call/{call['id']}?ticket={ticket(ext)}&policy=relay"
        ctx = browser.new_context(viewport={"width": 1000, "height": 760})
        page = ctx.new_page()
        page.goto(f"{host.origin}/?src={quote(src, safe='')}")
        frame = page.frame_locator("#call")
        frame.locator("#call").wait_for(timeout=15_000)
        pages.append(page)
        frames.append(page.frames[1])
    caller, callee = frames
    wait_until(callee, "window.traverseCall && window.traverseCall.ringingMe", timeout=15_000)
    callee.click("#accept")
    for f in frames:
        wait_until(f, CONNECTED, timeout=25_000)
        pair = wait_until(f, "window.traverseCall.selectedPair()", timeout=5_000)
        assert pair["connectionType"] == "relay", pair
        assert f.evaluate("window.traverseCall.deviceToken")
    # End users go by their display names: the internal username (acme~u-1) shows nowhere.
    for f in frames:
        assert "~" not in f.inner_text("#call")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages[0].screenshot(path=str(SCREENSHOTS / "embed-in-integrator-page-1000.png"))
    # A dropped socket comes back with the device token (the ticket is used up).
    sessions = caller.evaluate("window.traverseCall.signalingSessions")
    caller.evaluate("window.traverseCall.signal.ws.close()")
    wait_until(
        caller, "(n) => window.traverseCall.signalingSessions > n", arg=sessions, timeout=15_000
    )
    assert caller.evaluate(CONNECTED) and caller.evaluate("window.traverseCall.errors") == []

    # Another origin can't frame it: the browser refuses (frame-ancestors).
    page = browser.new_context().new_page()
    src = f"{base}/embed/call/{call['id']}?ticket={ticket('u-1')}"
    blocked: list[str] = []
    page.on("console", lambda m: "frame-ancestors" in m.text and blocked.append(m.text))
    page.goto(f"{stranger.origin}/?src={quote(src, safe='')}")
    page.wait_for_timeout(1500)
    assert blocked, "the stranger's page framed the call"
    # And a used ticket doesn't open the page's socket again.
    used = frames[0].evaluate("document.getElementById('call').dataset.ticket")
    again = browser.new_context().new_page()
    again.goto(f"{base}/embed/call/{call['id']}?ticket={used}")
    wait_until(again, "window.traverseCall && window.traverseCall.ended", timeout=15_000)
    e2e_figures.append(
        "embed: two end users connected through the relay inside the integrator's iframe"
    )
