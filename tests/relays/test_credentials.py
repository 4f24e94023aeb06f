"""TURN REST credentials: the format coturn's use-auth-secret checks, and coturn accepting them."""

import base64
import hashlib
import hmac

import pytest

from relays.credentials import turn_rest_credential, turn_rest_username, username_expiry
from tests.relays.conftest import probe


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


def test_coturn_takes_fresh_and_nearly_expired_credentials_and_refuses_expired_ones(coturn):
    relay = coturn(allow_loopback_peers=False)
    report = probe(relay.urls, relay.secret, check_credentials=True)
    assert report.ok, report.error
    check = report.credentials
    assert check.near_expiry_ok is True  # expires in 5 s: still accepted
    assert check.expired_refused is True  # expired 60 s ago: refused
    assert check.clock_skew is None and not check.bad_secret


def test_other_secrets_are_refused(coturn):
    relay = coturn(allow_loopback_peers=False)
    report = probe(relay.urls, "other", check_credentials=True)
    assert {r.error for r in report.results if r.kind == "turn"} == {"401"}
    assert report.credentials.bad_secret
