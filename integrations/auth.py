"""API keys over HTTP: `Authorization: Bearer <key>`, and what a key may do (its scopes).

djangorestframework-api-key's own permission reads `Authorization: Api-Key …`; integrators send
the usual Bearer scheme, so this authentication class reads that and looks the key up with the
library's manager (hashed keys, revocation, expiry). A missing or bad key is a 401 with
`WWW-Authenticate: Bearer`; a good key without the scope a view names is a 403.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from config.ratelimits import retry_after

from .models import IntegratorKey

LAST_USE_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often
ANY_KEY = "*"  # in a view's key_scopes: any valid key, whatever its scopes


class IntegratorPrincipal:
    """Who a key-authenticated request is: the integrator, through one of its keys. Not a
    person: views that act for a signed-in person refuse it (KeyScopes)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __init__(self, key: IntegratorKey):
        self.key = key
        self.integrator = key.integrator
        self.scopes = frozenset(key.scopes)

    def __str__(self) -> str:
        return f"integrator {self.integrator.slug} (key {self.key.prefix})"


class BearerKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Send the key as `Authorization: Bearer <key>`, with nothing else."
            )
        key = parts[1].decode("latin-1")
        try:
            api_key = cast(IntegratorKey, IntegratorKey.objects.get_from_key(key))
        except IntegratorKey.DoesNotExist:
            raise exceptions.AuthenticationFailed(
                "This API key is not valid: unknown, mistyped or revoked."
            ) from None
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USE_RESOLUTION:
            IntegratorKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return IntegratorPrincipal(api_key), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="traverse"'


class DeviceTokenAuthentication(BaseAuthentication):
    """An integrator's end user's page over HTTP: `Authorization: Device <token>`, the device
    token its socket's welcome gave (integrations.tickets). The request is that person's, as a
    signed-in one's would be (ICE refreshes, relay reports), without a cookie or CSRF token (a
    header no other site's page can send)."""

    keyword = b"device"

    def authenticate(self, request):
        from .tickets import TicketError, device_token_user

        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send `Authorization: Device <token>`.")
        try:
            user = device_token_user(parts[1].decode("latin-1"))
        except TicketError as exc:
            raise exceptions.AuthenticationFailed(str(exc), code=exc.code) from None
        return user, None


def key_principal(request) -> IntegratorPrincipal | None:
    user = getattr(request, "user", None)
    return user if isinstance(user, IntegratorPrincipal) else None


class KeyScopes(BasePermission):
    """The API's default permission. Signed-in people (a session) pass where they pass today;
    an API key passes only where the view names a scope for the method (`key_scopes`, e.g.
    {"GET": "calls:read"}) and the key has it."""

    message = "Sign in, or send an API key: `Authorization: Bearer <key>`."

    def has_permission(self, request, view) -> bool:
        principal = key_principal(request)
        if principal is None:
            return bool(request.user and request.user.is_authenticated)
        needed = (getattr(view, "key_scopes", None) or {}).get(request.method)
        if needed is None:
            self.message = "This endpoint is for signed-in people; API keys can't use it."
            return False
        if needed != ANY_KEY and needed not in principal.scopes:
            self.message = f"This API key lacks the scope `{needed}`."
            return False
        return True


class KeyRateThrottle(BaseThrottle):
    """Requests per API key (API_KEY_RATE), 429 with Retry-After beyond it: a fixed window counted
    in one round trip (config.ratelimits). Session requests are not counted here."""

    def __init__(self) -> None:
        self._wait: int | None = None

    def allow_request(self, request, view) -> bool:
        from django.conf import settings

        principal = key_principal(request)
        if principal is None:
            return True
        self._wait = retry_after(
            group="api.key", key=principal.key.prefix, rate=settings.API_KEY_RATE
        )
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait
