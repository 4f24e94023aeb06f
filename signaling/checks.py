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
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if backend != "channels_redis.core.RedisChannelLayer":
        errors.append(
            Error(
                f"CHANNEL_LAYERS['default'] is {backend!r}: signaling reads channels-redis's "
                "RedisChannelLayer (one reader per process, signaling/layer_reader.py).",
                id="signaling.E004",
            )
        )
    return errors


@register()
def presence_settings_check(app_configs, **kwargs):
    errors = []
    if settings.PRESENCE_TTL_SECONDS < 3:
        errors.append(
            Error("PRESENCE_TTL_SECONDS must be at least 3 seconds.", id="signaling.E002")
        )
    if settings.SIGNALING_GRACE_SECONDS <= 0 or settings.CALL_RING_TIMEOUT <= 0:
        errors.append(
            Error(
                "SIGNALING_GRACE_SECONDS and CALL_RING_TIMEOUT must be positive.",
                id="signaling.E003",
            )
        )
    return errors
