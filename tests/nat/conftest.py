"""The NAT lab's fixtures: the namespaces (tests/nat/lab.py), Traverse and a relay on the lab's
internet address, and one Chromium per home network, each inside its home's namespace."""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import IN_CI, make_certificate, need_binary
from tests.e2e.conftest import CHROMIUM_ARGS, child_env, need_postgres, platform_running
from tests.nat.lab import SECOND_ADDRESS, SERVER_ADDRESS, WEB_PORT, NatLab, missing


@pytest.fixture(scope="module")
def nat_lab():
    why = missing()
    if why:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    lab = NatLab()
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def lab_certificate(tmp_path_factory) -> tuple[str, str]:
    """A certificate for the lab relays' TLS (turns: on 443), for both lab addresses. The
    prober verifies relay certificates, so the lab's worker trusts this one (SSL_CERT_FILE)."""
    return make_certificate(
        tmp_path_factory.mktemp("lab-tls"),
        common_name=SERVER_ADDRESS,
        alt_names=f"IP:{SERVER_ADDRESS},IP:{SECOND_ADDRESS}",
    )


@pytest.fixture(scope="module")
def lab_platform(nat_lab, lab_certificate, django_db_setup, django_db_blocker, tmp_path_factory):
    """Daphne and a Celery worker listening on the lab's internet address (port 80)."""
    need_postgres()
    logs = tmp_path_factory.mktemp("nat-logs")
    env = {
        **child_env(),
        "SSL_CERT_FILE": lab_certificate[0],
        "DJANGO_ALLOWED_HOSTS": f"{SERVER_ADDRESS},127.0.0.1,localhost",
        # Each caller gets the lab's one relay (no fallback to fail over to: the path is the one).
        "RELAYS_PER_CALLER": "1",
    }
    with platform_running(logs, env, host=SERVER_ADDRESS, port=WEB_PORT) as base:
        yield {"base": base, "logs": logs}


@pytest.fixture(scope="module")
def playwright_driver():
    need_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def spki_hash(cert: str) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium's
    --ignore-certificate-errors-spki-list takes it."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(cert, "rb") as f:
        public = x509.load_pem_x509_certificate(f.read()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def lab_browser(playwright_driver, nat_lab, lab_platform, lab_certificate, tmp_path):
    """Launches Chromium inside a side's namespace. Playwright talks to it over a pipe, which
    crosses namespaces; the browser's own traffic leaves only through the home's network."""
    opened = []

    def launch(side):
        wrapper = tmp_path / f"chromium-{side.netns}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {side.netns} /usr/bin/chromium "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        browser = playwright_driver.chromium.launch(
            executable_path=str(wrapper),
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                # A page on http://203.0.113.10 is a secure context only with this (no camera
                # otherwise); the exact origin.
                f"--unsafely-treat-insecure-origin-as-secure={lab_platform['base']}",
                # Chromium verifies a TURN server's TLS certificate: it trusts the lab's own
                # (that key only), as it would a real relay's from a public CA.
                f"--ignore-certificate-errors-spki-list={spki_hash(lab_certificate[0])}",
            ],
            env={**os.environ},
        )
        opened.append(browser)
        return browser

    yield launch
    for browser in opened:
        try:
            browser.close()
        except Exception:  # noqa: BLE001 - a browser that died already: nothing to close
            pass
    nat_lab.clear_sides()
