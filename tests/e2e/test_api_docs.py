"""The API's documentation as an integrator opens it: Swagger UI and Redoc, served from here
(no CDN), rendering under the site's Content-Security-Policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))


@pytest.mark.parametrize(
    "path,ready,shot",
    [
        ("/api/v1/docs/", ".swagger-ui .opblock", "api-swagger-1280.png"),
        ("/api/v1/redoc/", "[data-section-id]", "api-redoc-1280.png"),
    ],
)
def test_the_api_docs_render_from_this_server(services, browser, path, ready, shot):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    problems: list[str] = []

    def console(message) -> None:
        # Redoc's sidebar always asks for its maker's logo from their CDN; the CSP blocks it
        # (nothing leaves), and that is the one error allowed here.
        if message.type == "error" and "cdn.redoc.ly/redoc/logo-mini.svg" not in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on(  # what actually went out: a request the CSP blocked never finishes
        "requestfinished",
        lambda r: (
            not r.url.startswith((services["base"], "blob:" + services["base"], "data:"))
            and problems.append(f"off-site: {r.url}")
        ),
    )
    page.goto(services["base"] + path)
    page.wait_for_selector(ready, timeout=20_000)
    assert "/api/v1/calls/" in page.inner_text("body")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / shot))
    assert problems == []
    ctx.close()
