"""manage.py probe_relays: one sweep in the foreground, progress while it runs, then a summary.

Exits 1 when an enabled relay is down or unsafe, so scripts and monitors can act on it.
"""

import json
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from relays.models import Relay
from relays.services import relay_sweep


class Command(BaseCommand):
    help = "Probe every enabled relay now (Binding, Allocate per URL, data plane, safety audit, credentials)."

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
        total = Relay.objects.filter(enabled=True, **({"pk__in": ids} if ids else {})).count()
        if not total:
            self.stdout.write("no enabled relay to probe")
            return
        progress = sys.stderr
        t0 = time.perf_counter()
        done = 0
        progress.write(f"probing {total} relay(s)…\n")

        def on_result(relay, report):
            nonlocal done
            done += 1
            mark = "ok " if report.ok else "!! "
            progress.write(f"  [{done}/{total}] {mark}{relay.name} ({report.duration_ms:.0f} ms)\n")
            progress.flush()

        outcomes = relay_sweep(relay_ids=ids, force=True, on_result=on_result)
        progress.write(f"done in {(time.perf_counter() - t0) * 1000:.0f} ms\n")
        if as_json:
            for o in outcomes:
                self.stdout.write(json.dumps(_summary(o)))
        else:
            self._table(outcomes)
        bad = [o.relay.name for o in outcomes if o.relay.status == "down" or o.relay.unsafe]
        if bad:
            raise CommandError(f"down or unsafe: {', '.join(bad)}", returncode=1)

    def _table(self, outcomes):
        self.stdout.write(
            f"{'RELAY':20} {'STATUS':9} {'SEEN':8} {'RTT':>9} {'LOSS':>6}  SAFETY    URLS"
        )
        for o in outcomes:
            r, rep = o.relay, o.report
            rtt = f"{rep.rtt_ms:.2f}ms" if rep.rtt_ms is not None else "-"
            dp = rep.data_plane
            loss = f"{dp.loss * 100:.0f}%" if dp and dp.loss is not None else "-"
            safety = {"unsafe": "UNSAFE", "safe": "ok"}.get(r.display_safety(), "unaudited")
            style = self.style.SUCCESS if r.status == "up" and not r.unsafe else self.style.ERROR
            urls = " ".join(f"{u.url}={'ok' if u.ok else u.error}" for u in rep.results)
            self.stdout.write(
                style(
                    f"{r.name:20} {r.display_status():9} {o.observation:8} {rtt:>9} {loss:>6}  {safety:9} {urls}"
                )
            )
            if r.unsafe:
                self.stdout.write(f"{'':20} accepts private peers: {', '.join(r.accepted_peers)}")
            if rep.credentials and rep.credentials.clock_skew:
                self.stdout.write(f"{'':20} clock skew: {rep.credentials.clock_skew}")


def _summary(o) -> dict:
    r, rep = o.relay, o.report
    dp = rep.data_plane
    return {
        "name": r.name,
        "status": r.display_status(),
        "observation": o.observation,
        "unsafe": r.unsafe,
        "safety": r.display_safety(),
        "accepted_peers": list(r.accepted_peers),
        "rtt_ms": rep.rtt_ms,
        "transports": r.transport_status,
        "data_plane": dp.as_dict() if dp else None,
        "clock_skew": rep.credentials.clock_skew if rep.credentials else None,
        "urls": [{"url": u.url, "ok": u.ok, "ms": u.ms, "error": u.error} for u in rep.results],
    }
