"""Integrators: the products that use Traverse through its API, and their keys.

An integrator owns its keys (and, as the API grows, its end users, webhooks and allowed
origins): rotating a key (create a new one, revoke the old) orphans nothing. Keys are
djangorestframework-api-key's: stored hashed (SHA-512 of a 32-character random secret), shown
once, revocable, with an optional expiry; each carries scopes and records its last use.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey


class Scope(models.TextChoices):
    CALLS_READ = "calls:read", "Read calls"
    CALLS_WRITE = "calls:write", "Start and end calls"
    USERS_WRITE = "users:write", "Create, update and delete end users; mint their tickets"
    ICE_ISSUE = "ice:issue", "Issue ICE servers (TURN credentials)"
    RELAYS_ADMIN = "relays:admin", "Manage relays"
    WEBHOOKS = "webhooks", "Manage webhook subscriptions"


def validate_scopes(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValidationError("Scopes are a list of names.")
    unknown = sorted(set(value) - set(Scope.values))
    if unknown:
        raise ValidationError(
            f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(Scope.values)}."
        )


def validate_origins(value: object) -> None:
    if not isinstance(value, list):
        raise ValidationError('Allowed origins are a list, e.g. ["https://app.example.com"].')
    for origin in value:
        if not isinstance(origin, str) or not origin.startswith(("https://", "http://")):
            raise ValidationError(f"{origin!r} is not an origin (scheme://host[:port]).")
        if origin.rstrip("/") != origin or origin.count("/") != 2:
            raise ValidationError(f"{origin!r}: an origin has no path (no trailing slash).")


class Integrator(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    allowed_origins = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_origins],
        help_text='Where its pages embed calls, e.g. ["https://app.example.com"].',
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class IntegratorKey(AbstractAPIKey):
    integrator = models.ForeignKey(Integrator, on_delete=models.CASCADE, related_name="keys")
    scopes = models.JSONField(default=list, validators=[validate_scopes])
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
