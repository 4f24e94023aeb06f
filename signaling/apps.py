from django.apps import AppConfig


class SignalingConfig(AppConfig):
    name = "signaling"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
