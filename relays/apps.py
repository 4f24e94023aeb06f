from django.apps import AppConfig


class RelaysConfig(AppConfig):
    name = "relays"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from . import checks  # noqa: F401 - registers the system checks
        from .models import RegionRange, Relay
        from .snapshot import fleet_changed

        # A relay or an address range saved or deleted in this process: selection sees it at
        # once (the sweep's bulk writes call fleet_changed themselves).
        for model in (Relay, RegionRange):
            post_save.connect(fleet_changed, sender=model, dispatch_uid=f"fleet-{model.__name__}")
            post_delete.connect(
                fleet_changed, sender=model, dispatch_uid=f"fleet-{model.__name__}-del"
            )
