"""manage.py relays add|list|remove: the relay registry for admins who script."""

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from relays.models import Relay
from relays.services import (
    relay_create,
    relay_disable,
    relay_drain,
    relay_enable,
    relay_remove,
    relay_stage_next_secret,
    relay_update,
)


def _read_secret(path: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise CommandError(f"cannot read the secret file: {exc.strerror}") from exc
    if not secret:
        raise CommandError("the secret file is empty")
    return secret


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
        add.add_argument(
            "--allow-private",
            action="store_true",
            help="the relay's own address is not public (loopback, private, link-local, CGNAT, "
            "documentation ranges, or a name that does not resolve): a test rig or a lab",
        )
        add.add_argument(
            "--reason",
            default="",
            help="why --allow-private (recorded as an event; default: 'registered from the command line')",
        )
        add.add_argument(
            "--update",
            action="store_true",
            help="when the relay exists, update its URLs, secret, region and realm (idempotent provisioning)",
        )
        sub.add_parser("list", help="list relays and their health")
        rm = sub.add_parser("remove", help="remove a relay")
        rm.add_argument("name")
        for action, text in (
            ("drain", "no new assignments; current credentials run out"),
            ("disable", "no probes, no assignments"),
            ("enable", "back in service (and stop draining)"),
        ):
            sub.add_parser(action, help=text).add_argument("name")
        rot = sub.add_parser(
            "rotate", help="stage the next secret; issuing switches once a probe with it succeeds"
        )
        rot.add_argument("name")
        rot.add_argument("--next-secret-file", required=True)

    def handle(self, *args, action, **opts):
        getattr(self, f"do_{action}")(**opts)

    def do_add(
        self,
        *,
        name,
        urls,
        secret_file,
        region,
        realm,
        disabled,
        update=False,
        allow_private=False,
        reason="",
        **_,
    ):
        secret = _read_secret(secret_file)
        existing = Relay.objects.filter(name=name).first() if update else None
        if allow_private and not reason:
            reason = "registered from the command line with --allow-private"
        try:
            if existing is not None:
                relay_update(
                    relay=existing,
                    urls=urls,
                    secret=secret,
                    region=region,
                    realm=realm,
                    allow_private=allow_private or existing.allow_private,
                    private_reason=reason,
                )
                self.stdout.write(self.style.SUCCESS(f"updated relay {name} ({len(urls)} URL(s))"))
                return
            relay = relay_create(
                name=name,
                urls=urls,
                secret=secret,
                region=region,
                realm=realm,
                enabled=not disabled,
                allow_private=allow_private,
                private_reason=reason,
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
        self.stdout.write(
            f"{'NAME':20} {'STATUS':9} {'STATE':9} {'SAFETY':9} {'RTT':>9} {'REGION':10} URLS"
        )
        for r in relays:
            state = "disabled" if not r.enabled else ("draining" if r.draining else "active")
            safety = {"unsafe": "UNSAFE", "safe": "ok"}.get(r.display_safety(), "unaudited")
            rtt = f"{r.last_rtt_ms:.2f}ms" if r.last_rtt_ms is not None else "-"
            self.stdout.write(
                f"{r.name:20} {r.display_status():9} {state:9} {safety:9} {rtt:>9} {r.region or '-':10} {' '.join(r.urls)}"
            )

    def _relay(self, name: str) -> Relay:
        relay = Relay.objects.filter(name=name).first()
        if relay is None:
            raise CommandError(f"no relay named {name!r}")
        return relay

    def do_drain(self, *, name, **_):
        relay_drain(relay=self._relay(name), actor=None)
        self.stdout.write(self.style.SUCCESS(f"draining {name}"))

    def do_disable(self, *, name, **_):
        relay_disable(relay=self._relay(name), actor=None)
        self.stdout.write(self.style.SUCCESS(f"disabled {name}"))

    def do_enable(self, *, name, **_):
        relay_enable(relay=self._relay(name), actor=None)
        self.stdout.write(self.style.SUCCESS(f"enabled {name}"))

    def do_rotate(self, *, name, next_secret_file, **_):
        relay = self._relay(name)
        try:
            relay_stage_next_secret(relay=relay, secret=_read_secret(next_secret_file), actor=None)
        except ValidationError as exc:
            raise CommandError("; ".join(" ".join(v) for v in exc.message_dict.values())) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"staged the next secret of {name}; issuing switches after a probe with it succeeds"
            )
        )

    def do_remove(self, *, name, **_):
        if not relay_remove(name=name):
            raise CommandError(f"no relay named {name!r}")
        self.stdout.write(self.style.SUCCESS(f"removed relay {name}"))
