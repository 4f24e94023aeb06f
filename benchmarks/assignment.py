"""Benchmark: relay assignment with 1,000 relays in the database.

    .venv/bin/python benchmarks/assignment.py [--relays 1000] [--rounds 300]

Measures, in one run, on PostgreSQL (BENCH_DATABASE_URL, default …/traverse_bench):
- selection (`relays.selectors.select_relays_for`: load, score, choose) p50 and p99, next to the
  baseline of loading the same 1,000 relays through the ORM (goal: p99 <= 2 ms);
- SQL queries per `GET /api/v1/ice-servers/` beyond authentication (goal: <= 3);
- requests per second of that endpoint next to a trivial Django JSON view, both through the
  same Django stack in this process (goal: >= 0.7x the trivial view).

Results: benchmarks/results/assignment.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from benchmarks.soak import setup_django  # noqa: E402

REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-east"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def timed(fn, rounds: int) -> dict:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }


def make_fleet(n: int):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from relays.models import CredentialGrant, RegionRange, Relay, RelayStatus

    Relay.objects.filter(name__startswith="bench-").delete()
    RegionRange.objects.filter(note="bench").delete()
    rng = random.Random(1)
    now = timezone.now()
    relays = [
        Relay(
            name=f"bench-{i:04d}",
            region=rng.choice(REGIONS),
            failure_domain=f"dc-{i % 40}",
            urls=[f"turn:bench-{i}.example:3478?transport=udp"],
            secret="s" * 16,
            status=rng.choice([RelayStatus.UP] * 8 + [RelayStatus.DEGRADED, RelayStatus.DOWN]),
            last_rtt_ms=rng.uniform(2, 250),
            last_checked_at=now + timedelta(hours=1),  # fresh for the whole run
            audited_at=now,
            capacity=rng.choice([None, 500, 2000]),
            claimed_until=now + timedelta(hours=1),
        )
        for i in range(n)
    ]
    Relay.objects.bulk_create(relays)
    for i, region in enumerate(REGIONS):
        RegionRange.objects.create(network=f"198.51.{100 + i}.0/24", region=region, note="bench")
    users = get_user_model().objects
    user = users.filter(username="bench-caller").first() or users.create_user(
        "bench-caller", password="bench-password-1"
    )
    CredentialGrant.objects.filter(user=user).delete()
    grant = CredentialGrant.objects.create(user=user, expires_at=now + timedelta(hours=1))
    grant.relays.set(rng.sample(relays, 50))  # some load
    return user


def trivial_view(request):
    from django.http import JsonResponse

    return JsonResponse({"ok": True})


def trivial_signed_in_view(request):
    """The same, for the signed-in caller: the session and user reads every API call pays."""
    from django.http import JsonResponse

    return JsonResponse({"user": request.user.pk})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relays", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.urls import include, path

    from relays.models import Relay
    from relays.selectors import select_relays_for

    user = make_fleet(args.relays)
    ip = "198.51.101.7"

    def select():
        select_relays_for(user=user, ip=ip)

    def load_through_orm():
        list(Relay.objects.all())

    timed(select, 20)  # warm up
    selection = timed(select, args.rounds)
    orm = timed(load_through_orm, args.rounds)

    # One URLconf: the platform's, plus a trivial JSON view on the same stack.
    module = type(sys)("bench_urls")
    module.urlpatterns = [
        path("bench/trivial/", trivial_view),
        path("bench/trivial-signed-in/", trivial_signed_in_view),
        path("", include(settings.ROOT_URLCONF)),
    ]
    sys.modules["bench_urls"] = module
    with override_settings(ROOT_URLCONF="bench_urls", ALLOWED_HOSTS=["*"]):
        client = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_REAL_IP=ip)
        assert client.login(username="bench-caller", password="bench-password-1")
        client.get("/api/v1/ice-servers/")  # the process's fleet snapshot, as in service
        with CaptureQueriesContext(connection) as captured:
            response = client.get("/api/v1/ice-servers/")
        assert response.status_code == 200, response.content
        control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
        statements = [
            q["sql"] for q in captured.captured_queries if not q["sql"].startswith(control)
        ]
        auth = [s for s in statements if "django_session" in s or '"accounts_user"' in s]

        def rate(url: str, seconds: float = 5.0) -> float:
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                assert client.get(url).status_code == 200
                n += 1
            return n / (time.perf_counter() - t0)

        rate("/bench/trivial/", 1.0)
        trivial_rps = rate("/bench/trivial/")
        signed_in_rps = rate("/bench/trivial-signed-in/")
        ice_rps = rate("/api/v1/ice-servers/")
        # A page refreshing its credentials (?keep=): the same grant, extended.
        keep = client.get("/api/v1/ice-servers/").json()["grant"]
        refresh_url = f"/api/v1/ice-servers/?keep={keep}"
        with CaptureQueriesContext(connection) as captured_refresh:
            assert client.get(refresh_url).status_code == 200
        refresh_statements = [
            q["sql"] for q in captured_refresh.captured_queries if not q["sql"].startswith(control)
        ]
        refresh_rps = rate(refresh_url)

    out = {
        "machine": {"python": platform.python_version(), "database": connection.vendor},
        "relays": args.relays,
        "selection": selection,
        "baseline_orm_load_all": orm,
        "queries_per_ice_servers": len(statements),
        "queries_beyond_auth": len(statements) - len(auth),
        "statements": statements,
        "trivial_view_rps": round(trivial_rps),
        "trivial_signed_in_view_rps": round(signed_in_rps),
        "ice_servers_rps": round(ice_rps),
        "ice_servers_refresh_rps": round(refresh_rps),
        "queries_per_refresh": len(refresh_statements),
        "ratio_to_signed_in_trivial": round(ice_rps / signed_in_rps, 2),
        "goals": {
            "selection_p99_le_2ms": selection["p99_ms"] <= 2.0,
            "queries_beyond_auth_le_3": len(statements) - len(auth) <= 3,
            "rps_ge_0_7x_trivial": ice_rps >= 0.7 * trivial_rps,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "assignment.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# Relay assignment",
        "",
        f"{args.relays} relays in {connection.vendor}; Python {platform.python_version()}.",
        "",
        "| figure | measured | baseline | goal |",
        "|---|---|---|---|",
        f"| selection p50 / p99 | {selection['p50_ms']} / {selection['p99_ms']} ms | ORM load of all relays: {orm['p50_ms']} / {orm['p99_ms']} ms | p99 <= 2 ms: **{out['goals']['selection_p99_le_2ms']}** |",
        f"| SQL per GET /api/v1/ice-servers/ beyond authentication | {out['queries_beyond_auth']} (of {out['queries_per_ice_servers']}) | - | <= 3: **{out['goals']['queries_beyond_auth_le_3']}** |",
        f"| requests/s, GET /api/v1/ice-servers/ (a new page: a grant is written) | {out['ice_servers_rps']} ({out['ratio_to_signed_in_trivial']}x the signed-in view) | trivial JSON view: {out['trivial_view_rps']}; signed in (session + user read): {out['trivial_signed_in_view_rps']} | >= 0.7x the trivial view: **{out['goals']['rps_ge_0_7x_trivial']}** |",
        f"| requests/s, a refresh (?keep=, the same relays: the grant's expiry moves) | {out['ice_servers_refresh_rps']} | {out['queries_per_refresh']} SQL statements in all | - |",
        "",
    ]
    (RESULTS / "assignment.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
