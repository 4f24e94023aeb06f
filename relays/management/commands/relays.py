"""manage.py relays add|list|remove: the relay registry for admins who script."""

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from relays.models import Relay
from relays.services import relay_create, relay_remove


class Command(BaseCommand):
    help = "Register, list and remove TURN/STUN relays."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="register a relay")
        add.add_argument("name")
        add.add_argument(
            "--url", action="append", required=True, dest="urls", help="ICE URL; repeat for several"
        )
        add.add_argument(
            "--secret-file", required=True, help="file holding the coturn static-auth-secret"
        )
        add.add_argument("--region", default="")
        add.add_argument("--realm", default="")
        add.add_argument("--disabled", action="store_true", help="register it disabled")
        sub.add_parser("list", help="list relays and their health")
        rm = sub.add_parser("remove", help="remove a relay")
        rm.add_argument("name")

    def handle(self, *args, action, **opts):
        getattr(self, f"do_{action}")(**opts)

    def do_add(self, *, name, urls, secret_file, region, realm, disabled, **_):
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the secret file: {exc.strerror}") from exc
        if not secret:
            raise CommandError("the secret file is empty")
        try:
            relay = relay_create(
                name=name,
                urls=urls,
                secret=secret,
                region=region,
                realm=realm,
                enabled=not disabled,
            )
        except ValidationError as exc:
            msgs = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(msgs) from exc
        self.stdout.write(self.style.SUCCESS(f"registered relay {relay.name} ({len(urls)} URL(s))"))

    def do_list(self, **_):
        relays = list(Relay.objects.all())
        if not relays:
            self.stdout.write("no relays registered")
            return
        self.stdout.write(f"{'NAME':20} {'STATUS':8} {'ENABLED':7} {'RTT':>9} {'REGION':10} URLS")
        for r in relays:
            status = "stale" if r.status == "up" and r.is_stale() else r.status
            rtt = f"{r.last_rtt_ms:.2f}ms" if r.last_rtt_ms is not None else "-"
            self.stdout.write(
                f"{r.name:20} {status:8} {'yes' if r.enabled else 'no':7} {rtt:>9} {r.region or '-':10} {' '.join(r.urls)}"
            )

    def do_remove(self, *, name, **_):
        if not relay_remove(name=name):
            raise CommandError(f"no relay named {name!r}")
        self.stdout.write(self.style.SUCCESS(f"removed relay {name}"))
