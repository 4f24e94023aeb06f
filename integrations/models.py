"""Integrators: the products that use Traverse through its API, and their keys.

An integrator owns its keys (and, as the API grows, its end users, webhooks and allowed
origins): rotating a key (create a new one, revoke the old) orphans nothing. Keys are
djangorestframework-api-key's: stored hashed (SHA-512 of a 32-character random secret), shown
once, revocable, with an optional expiry; each carries scopes and records its last use.
"""

from __future__ import annotations

from typing import ClassVar

from django.core.exceptions import ValidationError
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager


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


class IntegratorKeyManager(APIKeyManager):
    def get_usable_keys(self) -> models.QuerySet:
        # A key's request always acts for its integrator (IntegratorPrincipal): one read, not two.
        return super().get_usable_keys().select_related("integrator")


class IntegratorKey(AbstractAPIKey):
    integrator = models.ForeignKey(Integrator, on_delete=models.CASCADE, related_name="keys")
    scopes = models.JSONField(default=list, validators=[validate_scopes])
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[IntegratorKeyManager] = IntegratorKeyManager()

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class WebhookEventType(models.TextChoices):
    CALL_STARTED = "call.started", "A call started ringing"
    CALL_ANSWERED = "call.answered", "A call was answered"
    CALL_ENDED = "call.ended", "A call ended (with its reason)"
    PARTICIPANT_JOINED = "participant.joined", "A participant's device joined a call"
    PARTICIPANT_LEFT = "participant.left", "A participant left a call"
    RELAY_DOWN = "relay.down", "A relay went down"
    RELAY_UP = "relay.up", "A relay is up"
    RELAY_UNSAFE = "relay.unsafe", "A relay's safety audit found it reaches private addresses"


def validate_event_types(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValidationError("Events are a list of event types ([] : all of them).")
    unknown = sorted(set(value) - set(WebhookEventType.values))
    if unknown:
        raise ValidationError(f"Unknown event type(s): {', '.join(unknown)}.")


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and 32 random bytes in base64."""
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpoint(models.Model):
    """Where an integrator wants events POSTed, signed with its own secret (write-only: shown
    once, when the endpoint is made)."""

    integrator = models.ForeignKey(Integrator, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, default=new_webhook_secret, editable=False)
    events = models.JSONField(
        default=list, blank=True, validators=[validate_event_types], help_text="[] : every event."
    )
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["integrator", "id"]

    def __str__(self) -> str:
        return f"{self.integrator.slug}: {self.url}"

    def __repr__(self) -> str:
        return f"<WebhookEndpoint {self.pk} {self.url}>"  # never the secret

    def wants(self, event_type: str) -> bool:
        return self.enabled and (not self.events or event_type in self.events)


def new_message_id() -> str:
    import uuid

    return "msg_" + uuid.uuid4().hex


class WebhookMessage(models.Model):
    """One event, stored in the same transaction as the change it reports (the outbox): it is
    delivered later, however long the worker or Redis is away."""

    id = models.CharField(primary_key=True, max_length=40, default=new_message_id, editable=False)
    type = models.CharField(max_length=40, choices=WebhookEventType.choices)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    relay_event = models.ForeignKey(
        "relays.RelayEvent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Gave up"


class WebhookDelivery(models.Model):
    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    state = models.CharField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-next_attempt_at"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["message", "endpoint"], name="one_delivery_per_endpoint"
            )
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.endpoint_id} ({self.state})"
