"""manage.py probe_relays: one sweep in the foreground, with each relay's result."""

import json

from django.core.management.base import BaseCommand, CommandError

from relays.models import Relay
from relays.services import relay_sweep


class Command(BaseCommand):
    help = "Probe every enabled relay now (STUN Binding + TURN Allocate) and store the results."

    def add_arguments(self, parser):
        parser.add_argument(
            "--relay", action="append", dest="names", help="probe only this relay; repeatable"
        )
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="one JSON object per line per relay"
        )

    def handle(self, *args, names=None, as_json=False, **opts):
        ids = None
        if names:
            found = dict(Relay.objects.filter(name__in=names).values_list("name", "pk"))
            missing = sorted(set(names) - set(found))
            if missing:
                raise CommandError(f"no relay named {', '.join(missing)}")
            ids = list(found.values())
        outcomes = relay_sweep(relay_ids=ids)
        if not outcomes:
            self.stdout.write("no enabled relay to probe")
            return
        for o in outcomes:
            if as_json:
                self.stdout.write(_json_line(o))
                continue
            style = self.style.SUCCESS if o.report.ok else self.style.ERROR
            rtt = f"{o.report.rtt_ms:.2f} ms" if o.report.rtt_ms is not None else "-"
            self.stdout.write(
                style(
                    f"{o.relay.name:20} {o.relay.status:8} rtt={rtt:>9} in {o.duration_ms:.0f} ms"
                )
            )
            for r in o.report.results:
                mark = "ok  " if r.ok else "FAIL"
                ms = f"{r.ms:.2f} ms" if r.ms is not None else f"{r.error} {r.detail}"
                self.stdout.write(f"    {mark} {r.kind:4} {r.url}  {ms}")
        if any(not o.report.ok for o in outcomes):
            raise CommandError("some relays are down", returncode=1)


def _json_line(o) -> str:
    return json.dumps(
        {
            "name": o.relay.name,
            "status": o.relay.status,
            "rtt_ms": o.report.rtt_ms,
            "urls": [
                {"url": r.url, "ok": r.ok, "ms": r.ms, "error": r.error} for r in o.report.results
            ],
        }
    )
