"""The relay registry: relays, what their probes found, and the credentials handed out for them."""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .ice_urls import IceUrl, IceUrlError, parse_ice_url


def validate_ice_urls(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("Give at least one ICE URL.")
    for text in value:
        if not isinstance(text, str):
            raise ValidationError(f"{text!r} is not a string.")
        try:
            parse_ice_url(text)
        except IceUrlError as exc:
            raise ValidationError(str(exc)) from exc


class RelayStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    UP = "up", "Up"
    DOWN = "down", "Down"


class Relay(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=64, unique=True)
    region = models.CharField(max_length=64, blank=True)
    urls = models.JSONField(
        validators=[validate_ice_urls],
        help_text='ICE URLs, e.g. ["turn:relay1.example:3478?transport=udp", "turns:relay1.example:443?transport=tcp"].',
    )
    realm = models.CharField(max_length=128, blank=True)
    enabled = models.BooleanField(default=True)
    # The shared secret of coturn's use-auth-secret. Write-only: never in API output, admin
    # lists or logs (see __repr__ and RelayAdminForm).
    secret = models.CharField(max_length=256)

    status = models.CharField(
        max_length=16, choices=RelayStatus.choices, default=RelayStatus.UNKNOWN
    )
    last_rtt_ms = models.FloatField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "status"])]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Relay {self.name} {self.status}>"

    def ice_urls(self) -> list[IceUrl]:
        return [parse_ice_url(u) for u in self.urls]

    def is_stale(self, now=None) -> bool:
        """No probe newer than three sweep intervals: we no longer know it works."""
        if self.last_checked_at is None:
            return True
        now = now or timezone.now()
        return (now - self.last_checked_at).total_seconds() > 3 * settings.RELAY_SWEEP_INTERVAL


class ProbeResult(models.Model):
    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="probe_results")
    checked_at = models.DateTimeField(default=timezone.now, db_index=True)
    ok = models.BooleanField()
    rtt_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField()
    error = models.TextField(blank=True)
    urls = models.JSONField(default=list)  # [{url, kind, ok, ms, error, detail}]

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["relay", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.relay_id} {'ok' if self.ok else 'failed'} at {self.checked_at:%H:%M:%S}"


def new_grant_id() -> str:
    return "g_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


class CredentialGrant(models.Model):
    """One issue of TURN credentials. Its id is the opaque part of the TURN username, so relay
    logs can be traced back to a caller here without the relay ever seeing a name or email."""

    id = models.CharField(primary_key=True, max_length=32, default=new_grant_id, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="credential_grants"
    )
    relays = models.ManyToManyField(Relay, related_name="grants", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.id
