"""Relay assignment as people see it, in real Chromium: a call page that got no relay says so,
and the admin's pages say which relays a caller gets and why."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from relays.models import RegionRange, Relay, RelayStatus
from tests.e2e.conftest import dial, sign_in, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/traverse-screenshots"))


def test_a_call_with_no_relay_says_it_may_fail_behind_strict_nats(
    services, browser, alice, bob, password
):
    base = services["base"]
    page = sign_in(browser, base, "alice", password)  # relay only: with no relay, no traffic
    dial(page, "bob")
    wait_until(page, "!document.getElementById('relay-warning').hidden", timeout=10_000)
    # This page uses relays only (sign_in's privacy switch): it says the call can't connect.
    assert "can't connect until one is back" in page.inner_text("#relay-warning")
    assert page.evaluate("window.traverseCall.ice.status") == "no-healthy-relay"
    page.set_viewport_size({"width": 390, "height": 800})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "call-no-relay-390.png"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.click("#hangup")
    # A page that may go direct is told what that means instead.
    other = sign_in(browser, base, "bob", password)
    other.uncheck("#force-relay")
    dial(other, "alice")
    wait_until(other, "!document.getElementById('relay-warning').hidden", timeout=10_000)
    assert "strict NATs" in other.inner_text("#relay-warning")
    other.click("#hangup")


def _relay(name, region, rtt, **kw):
    return Relay.objects.create(
        name=name,
        region=region,
        urls=[f"stun:{name}.example:3478", f"turn:{name}.example:3478?transport=udp"],
        secret="s" * 16,
        status=kw.pop("status", RelayStatus.UP),
        last_rtt_ms=rtt,
        last_checked_at=timezone.now(),
        audited_at=timezone.now(),
        # Claimed for the next hour: the worker's sweeps leave these made-up relays alone.
        claimed_until=timezone.now() + timedelta(hours=1),
        **kw,
    )


def test_the_admin_sees_which_relays_a_caller_gets_and_why(
    services, browser, django_user_model, password
):
    base = services["base"]
    django_user_model.objects.create_superuser("ops", password=password)
    _relay("fra-1", "eu-central", 18, failure_domain="hetzner-fsn", capacity=500)
    _relay("ams-1", "eu-west", 24, failure_domain="aws-ams")
    _relay("iad-1", "us-east", 95, weight=1.5)
    _relay("sin-1", "ap-south", 210, status=RelayStatus.DEGRADED)
    _relay("old-1", "eu-west", 5, draining=True)
    RegionRange.objects.create(network="198.51.100.0/24", region="eu-central", note="lab")

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(base + "/admin/login/?next=/admin/relays/relay/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", password)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/relays/relay/")
    page.click("text=Which relays a caller gets")
    page.fill("input[name=ip]", "198.51.100.9")
    page.click("button:has-text('Explain')")
    page.wait_for_selector("tr[data-relay=fra-1].chosen")
    caller = page.inner_text(".explain-caller")
    assert "eu-central" in caller and "address ranges" in caller
    assert "draining" in page.inner_text("tr[data-relay=old-1]")
    assert "other region" in page.inner_text("tr[data-relay=iad-1]")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-explain-1280.png"), full_page=True)

    page.goto(base + "/admin/relays/relay/fleet/")
    assert "4 relays can be handed to callers" in page.inner_text(".fleet-assignable")
    assert "not handed out" in page.inner_text("[data-relay=old-1]")
    page.screenshot(path=str(SCREENSHOTS / "admin-fleet-1280.png"), full_page=True)
    ctx.close()
