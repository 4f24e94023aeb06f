"""manage.py relay_stats: count what relays publish (coturn's redis-statsdb) until stopped.

Live allocations per relay feed selection's load; bytes per grant and relay show in admin. Run
one beside the worker (the run command and deploy/systemd do); more wait as standbys.
"""

import signal
import threading

from django.core.management.base import BaseCommand

from relays.stats_listener import StatsListener


class Command(BaseCommand):
    help = "Count relays' live allocations and each grant's bytes from coturn's redis-statsdb."

    def handle(self, *args, **opts):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        StatsListener(stop=stop).run()
