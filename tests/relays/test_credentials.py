"""TURN REST credentials: the format coturn's use-auth-secret checks, and coturn accepting them."""

import asyncio
import base64
import hashlib
import hmac
import time

import pytest

from relays.credentials import (
    turn_rest_credential,
    turn_rest_pair,
    turn_rest_username,
    username_expiry,
)
from relays.ice_urls import parse_ice_url
from relays.probes import probe_relay


@pytest.mark.smoke
def test_username_puts_the_expiry_first():
    assert turn_rest_username(expires_at=1767225600, opaque_id="g_abc") == "1767225600:g_abc"
    assert username_expiry("1767225600:g_abc") == 1767225600
    assert username_expiry("alice") is None


@pytest.mark.smoke
def test_credential_is_base64_hmac_sha1_of_the_username():
    expected = base64.b64encode(
        hmac.new(b"s3cret", b"1767225600:g_abc", hashlib.sha1).digest()
    ).decode()
    assert turn_rest_credential(secret="s3cret", username="1767225600:g_abc") == expected
    assert len(expected) == 28 and expected.endswith("=")  # standard base64 with padding


@pytest.mark.smoke
def test_opaque_id_may_not_smuggle_a_colon():
    with pytest.raises(ValueError):
        turn_rest_username(expires_at=1, opaque_id="a:b")


def test_coturn_accepts_issued_credentials_and_refuses_other_secrets(coturn):
    relay = coturn(allow_loopback_peers=False)
    urls = [parse_ice_url(u) for u in relay.urls]
    good = turn_rest_pair(secret=relay.secret, expires_at=int(time.time()) + 60, opaque_id="g_test")
    bad = turn_rest_pair(secret="other", expires_at=int(time.time()) + 60, opaque_id="g_test")
    expired = turn_rest_pair(
        secret=relay.secret, expires_at=int(time.time()) - 60, opaque_id="g_test"
    )

    ok = asyncio.run(probe_relay(urls, username=good[0], password=good[1], timeout=3))
    assert ok.ok, ok.error
    for username, password in (bad, expired):
        report = asyncio.run(probe_relay(urls, username=username, password=password, timeout=3))
        assert not report.ok
        assert {r.error for r in report.results if r.kind == "turn"} == {"401"}
