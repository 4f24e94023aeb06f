"""manage.py apikeys: create, revoke and list integrators' API keys.

    manage.py apikeys create NAME --integrator SLUG --scope calls:read [--scope …]
    manage.py apikeys revoke NAME [--integrator SLUG]
    manage.py apikeys list

`create` makes the integrator when it is missing, and prints the key once, on its last line
(store it: only its hash is kept).
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from integrations.models import Integrator, IntegratorKey, Scope, validate_scopes


class Command(BaseCommand):
    help = "Create, revoke and list integrators' API keys."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="a new key; printed once, on the last line")
        create.add_argument("name")
        create.add_argument("--integrator", required=True, help="its slug (made when missing)")
        create.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            required=True,
            help=f"repeatable: {', '.join(Scope.values)}",
        )
        revoke = sub.add_parser("revoke", help="revoke a key by name (it can't be undone)")
        revoke.add_argument("name")
        revoke.add_argument("--integrator", help="when several integrators have a key so named")
        sub.add_parser("list", help="every key: prefix, name, integrator, scopes, last use")

    def handle(self, *args, action, **opts):
        return getattr(self, f"do_{action}")(**opts)

    def do_create(self, *, name, integrator, scopes, **_):
        try:
            validate_scopes(scopes)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        with transaction.atomic():
            owner, made = Integrator.objects.get_or_create(slug=integrator)
            _key, secret = IntegratorKey.objects.create_key(
                name=name, integrator=owner, scopes=sorted(set(scopes))
            )
        if made:
            self.stdout.write(f"created integrator {owner.slug}")
        self.stdout.write(
            f"key {name!r} for {owner.slug} with {', '.join(sorted(set(scopes)))}; "
            "store it now, it is not shown again:"
        )
        self.stdout.write(secret)

    def do_revoke(self, *, name, integrator=None, **_):
        keys = IntegratorKey.objects.filter(name=name, revoked=False)
        if integrator:
            keys = keys.filter(integrator__slug=integrator)
        found = list(keys)
        if not found:
            raise CommandError(f"no usable key named {name!r}")
        if len(found) > 1:
            raise CommandError(
                f"{len(found)} keys are named {name!r}: give --integrator "
                f"({', '.join(sorted(k.integrator.slug for k in found))})"
            )
        key = found[0]
        key.revoked = True
        key.save(update_fields=["revoked"])
        self.stdout.write(f"revoked key {name!r} ({key.prefix}) of {key.integrator.slug}")

    def do_list(self, **_):
        for key in IntegratorKey.objects.select_related("integrator").order_by(
            "integrator__slug", "name"
        ):
            state = "revoked" if key.revoked else ("expired" if key.has_expired else "active")
            used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
            self.stdout.write(
                f"{key.prefix:10} {key.name:24} {key.integrator.slug:20} {state:8} "
                f"{','.join(key.scopes):40} last used {used}"
            )
