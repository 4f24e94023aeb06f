"""Calls and who is in them, with what each device reported about its connection."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class CallState(models.TextChoices):
    RINGING = "ringing", "Ringing"
    ACTIVE = "active", "Active"
    ENDED = "ended", "Ended"


class EndReason(models.TextChoices):
    HANGUP = "hangup", "Hung up"
    NO_ANSWER = "no_answer", "No answer"
    CANCELLED = "cancelled", "Cancelled"
    CONNECTION_LOST = "connection_lost", "Connection lost"


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


class ParticipantState(models.TextChoices):
    """One device's place in a call. A socket that drops makes it `reconnecting` for the grace
    window (SIGNALING_GRACE_SECONDS); only when that runs out is it `left`."""

    RINGING = "ringing", "Ringing"
    JOINED = "joined", "Joined"
    RECONNECTING = "reconnecting", "Reconnecting"
    LEFT = "left", "Left"


class Participant(models.Model):
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="participations"
    )
    role = models.CharField(max_length=8, choices=ParticipantRole.choices)
    # The device channel (Channels) that joined; point-to-point signaling goes here.
    channel_name = models.CharField(max_length=200, blank=True)
    state = models.CharField(
        max_length=16, choices=ParticipantState.choices, default=ParticipantState.RINGING
    )
    joined_at = models.DateTimeField(null=True, blank=True)
    # When its socket dropped; the leave happens SIGNALING_GRACE_SECONDS later unless it returns.
    reconnecting_since = models.DateTimeField(null=True, blank=True)
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
        indexes = [models.Index(fields=["state", "reconnecting_since"])]

    def __str__(self) -> str:
        return f"{self.user} in {self.call_id}"

    @property
    def present(self) -> bool:
        """Its device is in the call with a live socket (not reconnecting, not left)."""
        return self.state == ParticipantState.JOINED and bool(self.channel_name)
