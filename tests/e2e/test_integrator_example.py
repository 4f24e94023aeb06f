"""examples/integrator.py, run as docs/integrators.md says, against the real server: it must
exit 0, having made users, a call, tickets and ICE servers, and ended the call."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from calls.models import Call
from tests.conftest import up_relay
from tests.integrations.test_api_keys import make_key

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def test_the_integrator_example_runs_as_documented(services):
    # A made-up healthy relay, claimed for an hour so the worker's sweeps leave it alone.
    up_relay("example-relay", claimed_until=timezone.now() + timedelta(hours=1))
    key = make_key("users:write", "calls:write", "calls:read", "ice:issue", integrator="acme")
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "integrator.py")],
        env={**os.environ, "TRAVERSE_URL": services["base"], "TRAVERSE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    out = run.stdout
    assert "integrator acme" in out and "ticket for example-grace" in out
    assert "relays ['example-relay']" in out
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("ended", "cancelled")
    assert key not in out + run.stderr
