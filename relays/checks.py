"""System checks for relay settings, so a misconfiguration shows at start-up, not in a call."""

from django.conf import settings
from django.core.checks import Error, register

from .ice_urls import IceUrlError, parse_ice_url


@register()
def relay_settings_check(app_configs, **kwargs):
    errors = []
    if settings.RELAY_SWEEP_INTERVAL <= 0:
        errors.append(Error("RELAY_SWEEP_INTERVAL must be positive.", id="relays.E001"))
    if not 0 < settings.RELAY_PROBE_TIMEOUT < settings.RELAY_SWEEP_INTERVAL:
        errors.append(
            Error(
                "RELAY_PROBE_TIMEOUT must be positive and shorter than RELAY_SWEEP_INTERVAL, "
                "or sweeps overlap.",
                id="relays.E002",
            )
        )
    for url in settings.FALLBACK_STUN_URLS:
        try:
            parsed = parse_ice_url(url)
        except IceUrlError as exc:
            errors.append(Error(f"FALLBACK_STUN_URLS: {exc}", id="relays.E004"))
            continue
        if parsed.is_turn:
            errors.append(
                Error(
                    f"FALLBACK_STUN_URLS: {url} is a TURN URL; list STUN servers only (TURN "
                    "needs credentials, which relays registered in admin get).",
                    id="relays.E004",
                )
            )
    if settings.TURN_CREDENTIAL_TTL < 60:
        errors.append(Error("TURN_CREDENTIAL_TTL must be at least 60 seconds.", id="relays.E003"))
    return errors
