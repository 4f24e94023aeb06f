#!/usr/bin/env python3
"""An integrator's server, talking to Traverse: the whole flow, with nothing but the standard
library.

    TRAVERSE_URL=http://127.0.0.1:8000 TRAVERSE_API_KEY=... python3 examples/integrator.py

The key needs the scopes users:write, calls:write, calls:read and ice:issue:
    python3 manage.py apikeys create example --integrator acme \\
        --scope users:write --scope calls:write --scope calls:read --scope ice:issue

It makes two end users, starts a call from one to the other, mints a join ticket for each (hand
them to their pages: /ws/signal/?ticket=… or the embed page), fetches ICE servers for one, reads
the call, ends it, and exits 0. Any error stops it with the API's error message and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

BASE = os.environ.get("TRAVERSE_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("TRAVERSE_API_KEY", "")


class ApiError(Exception):
    pass


def api(method: str, path: str, body: dict | None = None, **query) -> dict | None:
    url = f"{BASE}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read() or b"{}").get("error", {})
        raise ApiError(
            f"{method} {path}: {exc.code} {error.get('code')}: {error.get('message')} "
            f"{error.get('fields') or ''}".strip()
        ) from None


def main() -> int:
    if not KEY:
        print("Set TRAVERSE_API_KEY (and TRAVERSE_URL).", file=sys.stderr)
        return 2
    me = api("GET", "whoami/")
    print(f"integrator {me['integrator']}, key {me['key']}, scopes {', '.join(me['scopes'])}")

    for external_id, name in (("example-ada", "Ada"), ("example-grace", "Grace")):
        user = api("POST", "users/", {"externalId": external_id, "displayName": name})
        print(f"user {user['externalId']}: {user['displayName']}")

    call = api("POST", "calls/", {"participants": ["example-ada", "example-grace"]})
    print(f"call {call['id']}: {call['state']}")

    for external_id in ("example-ada", "example-grace"):
        ticket = api("POST", "tickets/", {"user": external_id, "call": call["id"]})
        print(f"ticket for {external_id}, valid until {ticket['expiresAt']}")

    ice = api("GET", "ice-servers/", user="example-ada", call=call["id"])
    print(f"ICE for example-ada: {ice['status']}, relays {[r['name'] for r in ice['relays']]}")

    calls = api("GET", "calls/", user="example-ada", state="ringing")
    assert any(c["id"] == call["id"] for c in calls["results"]), "the call is listed"

    ended = api("POST", f"calls/{call['id']}/end/")
    print(f"call {ended['id']}: {ended['state']} ({ended['end_reason']})")
    return 0


if __name__ == "__main__":
    import urllib.parse

    try:
        sys.exit(main())
    except ApiError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
