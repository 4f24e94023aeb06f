"""System checks for signaling settings: a misconfiguration shows at start-up, not in a call."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def signaling_settings_check(app_configs, **kwargs):
    errors = []
    if settings.REDIS_SOCKET_TIMEOUT <= settings.CHANNEL_LAYER_BLOCK_SECONDS:
        errors.append(
            Error(
                f"REDIS_SOCKET_TIMEOUT ({settings.REDIS_SOCKET_TIMEOUT} s) must be longer than the "
                f"channel layer's blocking read ({settings.CHANNEL_LAYER_BLOCK_SECONDS} s), or every "
                "idle signaling socket is closed when the read times out.",
                id="signaling.E001",
            )
        )
    return errors
