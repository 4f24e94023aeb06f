"""Calls and who is in them, with what each device reported about its connection."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class CallState(models.TextChoices):
    RINGING = "ringing", "Ringing"
    ACTIVE = "active", "Active"
    ENDED = "ended", "Ended"


class Call(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="calls_started"
    )
    state = models.CharField(
        max_length=16, choices=CallState.choices, default=CallState.RINGING, db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"call {self.id} ({self.state})"

    @property
    def duration_seconds(self) -> float | None:
        if self.answered_at and self.ended_at:
            return (self.ended_at - self.answered_at).total_seconds()
        return None


class ParticipantRole(models.TextChoices):
    CALLER = "caller", "Caller"
    CALLEE = "callee", "Callee"


class ConnectionType(models.TextChoices):
    HOST = "host", "Direct (host)"
    SRFLX = "srflx", "Direct (through NAT, srflx)"
    PRFLX = "prflx", "Direct (peer reflexive)"
    RELAY = "relay", "Relayed (TURN)"


class Participant(models.Model):
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="participations"
    )
    role = models.CharField(max_length=8, choices=ParticipantRole.choices)
    # The device channel (Channels) that joined; point-to-point signaling goes here.
    channel_name = models.CharField(max_length=200, blank=True)
    joined_at = models.DateTimeField(null=True, blank=True)
    left_at = models.DateTimeField(null=True, blank=True)
    # What the device reported from getStats() once connected.
    connection_type = models.CharField(max_length=8, choices=ConnectionType.choices, blank=True)
    relay = models.ForeignKey(
        "relays.Relay", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    relay_url = models.CharField(max_length=300, blank=True)
    rtt_ms = models.FloatField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["call", "id"]  # the caller first: created first
        constraints = [
            models.UniqueConstraint(
                fields=["call", "user"], name="one_participant_per_user_per_call"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.call_id}"

    @property
    def present(self) -> bool:
        return bool(self.channel_name) and self.left_at is None
