from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from config import ratelimits  # noqa: F401 - registers the rate settings' check

        from . import receivers  # noqa: F401 - connects the sign-out and deactivation receivers
