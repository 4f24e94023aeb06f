"""Calls and who is in them, with what each device reported about its connection."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class CallState(models.TextChoices):
    """ringing -> connecting (answered) -> connected (media up) -> ended. See docs/signaling.md."""

    RINGING = "ringing", "Ringing"
    CONNECTING = "connecting", "Connecting"
    CONNECTED = "connected", "Connected"
    ENDED = "ended", "Ended"


LIVE_STATES = (CallState.CONNECTING, CallState.CONNECTED)


class CallKind(models.TextChoices):
    VOICE = "voice", "Voice"
    VIDEO = "video", "Video"


class EndReason(models.TextChoices):
    HANGUP = "hangup", "Hung up"
    DECLINED = "declined", "Declined"
    BUSY = "busy", "Busy"
    NO_ANSWER = "no_answer", "No answer"
    CANCELLED = "cancelled", "Cancelled"
    CONNECTION_LOST = "connection_lost", "Connection lost"
    FAILED = "failed", "Failed (no network path)"
    # Not an end of the call: what the callee's other devices are told.
    ANSWERED_ELSEWHERE = "answered_elsewhere", "Answered on another device"


# Calls that end this way are missed for the callee.
MISSED_REASONS = (EndReason.NO_ANSWER, EndReason.CANCELLED)


class Call(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="calls_started"
    )
    state = models.CharField(
        max_length=16, choices=CallState.choices, default=CallState.RINGING, db_index=True
    )
    kind = models.CharField(max_length=8, choices=CallKind.choices, default=CallKind.VIDEO)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, choices=EndReason.choices, blank=True)
    # Missed for the callee (no answer, cancelled while ringing), and whether they have seen it.
    missed = models.BooleanField(default=False)
    missed_seen = models.BooleanField(default=False)
    # The last thing that happened to it (each CallEvent, and each connection report): what API
    # pollers ask for with ?updated_since=.
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"call {self.id} ({self.state})"

    @property
    def path_summary(self) -> str:
        """ "relayed" when any side went through a TURN relay, "direct" when every side reported
        a direct path, "" before they did. Only those who took part count (joined, or reported a
        path): an invitee who declined took no path. Uses prefetched participants."""
        return call_path(
            {
                p.connection_type
                for p in self.participants.all()
                if took_part(p.joined_at, p.connection_type)
            }
        )

    @property
    def duration_seconds(self) -> float | None:
        if self.answered_at and self.ended_at:
            return (self.ended_at - self.answered_at).total_seconds()
        return None


def took_part(joined_at, connection_type: str) -> bool:
    """Whether a participant counts towards the call's path: it joined, or reported a path (an
    invitee who declined took none)."""
    return bool(joined_at or connection_type)


def call_path(connection_types: set[str]) -> str:
    """A call's path from its participants' reported connection types: "relayed" when any side
    went through a relay, "direct" when every side reported a direct path, else ""."""
    if ConnectionType.RELAY in connection_types:
        return "relayed"
    if connection_types and "" not in connection_types:
        return "direct"
    return ""


class ParticipantRole(models.TextChoices):
    CALLER = "caller", "Caller"
    CALLEE = "callee", "Callee"
    # Asked into a call that was already going (a group call).
    INVITEE = "invitee", "Invited"


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
    # Invitees: when they were asked in, and by whom (their ringing times out like a call's).
    invited_at = models.DateTimeField(null=True, blank=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # When its socket dropped; the leave happens SIGNALING_GRACE_SECONDS later unless it returns.
    reconnecting_since = models.DateTimeField(null=True, blank=True)
    left_at = models.DateTimeField(null=True, blank=True)
    # The device session (signaling.sessions) that holds this participant: where its messages go.
    session = models.CharField(max_length=64, blank=True, db_index=True)
    # The device's media as it last signaled it (media-state).
    audio = models.BooleanField(default=True)
    video = models.BooleanField(default=True)
    screen = models.BooleanField(default=False)
    # What the device reported from getStats() once connected.
    connection_type = models.CharField(max_length=8, choices=ConnectionType.choices, blank=True)
    relay = models.ForeignKey(
        "relays.Relay", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    relay_url = models.CharField(max_length=300, blank=True)
    rtt_ms = models.FloatField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    # What the user's latest network test found on the network this device reported from
    # (relays.nettest: "endpoint-independent", …), "" when they never tested there.
    network_type = models.CharField(max_length=32, blank=True)
    # The relays this device was handed for the call (issued with the call in mind: the other
    # side's relay, or the nearest to it). `relay` and `relay_url` above are the path it used.
    assigned_relays = models.ManyToManyField(
        "relays.Relay",
        blank=True,
        through="AssignedRelay",
        related_name="assigned_participants",
    )

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

    def media(self) -> dict:
        return {"audio": self.audio, "video": self.video, "screen": self.screen}


class AssignedRelay(models.Model):
    """A relay a participant's device was handed for the call, in the order chosen (0: the
    best, then the fallback)."""

    participant = models.ForeignKey(
        Participant, on_delete=models.CASCADE, related_name="relay_assignments"
    )
    relay = models.ForeignKey("relays.Relay", on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["participant", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["participant", "relay"], name="one_assignment_per_participant_relay"
            )
        ]

    def __str__(self) -> str:
        return f"{self.relay_id} #{self.position} for {self.participant_id}"


class ChatMessage(models.Model):
    """A text message sent in a call (over signaling), kept with the call: its history shows
    them, they go when the call is deleted, and CHAT_RETENTION_DAYS prunes old ones."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="chat")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages"
    )
    text = models.TextField(max_length=2000)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["call", "at", "id"]

    def __str__(self) -> str:
        return f"{self.user} in {self.call_id}: {self.text[:40]}"


class CallEvent(models.Model):
    """One transition of a call or of a participant, with its time: the call's timeline."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(db_index=True)
    # A call state (ringing, connecting, connected, ended) or a participant step (accepted,
    # declined, joined, reconnecting, resumed, left, taken_over, rang).
    name = models.CharField(max_length=24)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.CharField(max_length=120, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%H:%M:%S}"


class QualityGrade(models.TextChoices):
    GOOD = "good", "Good"
    FAIR = "fair", "Fair"
    POOR = "poor", "Poor"


def quality_grade(*, rtt_ms: float | None, loss_pct: float | None) -> str:
    """The grade of one sample; the same table as the page's (docs/signaling.md, Quality)."""
    rtt = rtt_ms or 0.0
    loss = loss_pct or 0.0
    if rtt < 150 and loss < 2:
        return QualityGrade.GOOD
    if rtt < 400 and loss < 8:
        return QualityGrade.FAIR
    return QualityGrade.POOR


class QualitySample(models.Model):
    """A `stats` report from one device: the path and quality at one moment of the call."""

    participant = models.ForeignKey(
        Participant, on_delete=models.CASCADE, related_name="quality_samples"
    )
    at = models.DateTimeField()
    path = models.CharField(max_length=8, choices=ConnectionType.choices)
    relay_url = models.CharField(max_length=300, blank=True)
    rtt_ms = models.FloatField(null=True, blank=True)
    loss_pct = models.FloatField(null=True, blank=True)
    bitrate_kbps = models.FloatField(null=True, blank=True)
    grade = models.CharField(max_length=8, choices=QualityGrade.choices)

    class Meta:
        ordering = ["participant", "at"]
        indexes = [models.Index(fields=["participant", "at"])]

    def __str__(self) -> str:
        return f"{self.grade} via {self.path} at {self.at:%H:%M:%S}"
