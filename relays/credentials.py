"""TURN REST API credentials (draft-uberti-behave-turn-rest), as coturn's use-auth-secret checks them.

username = "<expiry unix>:<opaque id>", credential = base64(HMAC-SHA1(secret, username)).
No Django here, so the maths can be tested and reused by probes and benchmarks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def turn_rest_username(*, expires_at: int, opaque_id: str) -> str:
    if ":" in opaque_id:
        raise ValueError("the opaque id must not contain ':'")
    return f"{int(expires_at)}:{opaque_id}"


def turn_rest_credential(*, secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_rest_pair(*, secret: str, expires_at: int, opaque_id: str) -> tuple[str, str]:
    username = turn_rest_username(expires_at=expires_at, opaque_id=opaque_id)
    return username, turn_rest_credential(secret=secret, username=username)


def username_expiry(username: str) -> int | None:
    """The expiry encoded in a TURN REST username, or None when it has none."""
    head, _, _ = username.partition(":")
    return int(head) if head.isdigit() else None
