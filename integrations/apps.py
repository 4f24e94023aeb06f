from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Integrators"

    def ready(self) -> None:
        from . import schema  # noqa: F401 - registers the OpenAPI security schemes
