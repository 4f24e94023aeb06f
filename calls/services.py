"""Writes to calls: start, join, drop and resume, leave, end, expiry, and connection reports.

Services assume the caller is authorized (views and consumers check membership first) and do
their work atomically; broadcasts go out only after commit.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from relays.models import Relay
from signaling.broadcast import (
    BROADCAST_ERRORS,
    send_to_channels_on_commit,
    send_to_users_now,
    send_to_users_on_commit,
)

from .models import (
    Call,
    CallState,
    ConnectionType,
    EndReason,
    Participant,
    ParticipantRole,
    ParticipantState,
)
from .selectors import peers_present

logger = logging.getLogger(__name__)


class CallError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class CallUnavailable(CallError):
    """The call could not be rung (Redis is unreachable); nothing was stored."""

    def __init__(self, message: str = "Calls can't be placed right now; try again in a moment."):
        super().__init__("unavailable", message)


def call_start(*, caller, callee) -> Call:
    """Create a call from caller to callee and ring every device of the callee.

    A call is either rung or not created: the ring goes out right after the commit, and when it
    can't (the channel layer is unreachable) the call is deleted again and CallUnavailable raised.
    """
    if caller.pk == callee.pk:
        raise CallError("bad_callee", "You can't call yourself.")
    if not callee.is_active:
        raise CallError("bad_callee", "That account can't take calls.")
    with transaction.atomic():
        call = Call.objects.create(created_by=caller)
        Participant.objects.bulk_create(
            [
                Participant(call=call, user=caller, role=ParticipantRole.CALLER),
                Participant(call=call, user=callee, role=ParticipantRole.CALLEE),
            ]
        )
    event = {
        "type": "call.incoming",
        "call": str(call.id),
        "from": {"id": caller.pk, "username": caller.username, "name": caller.label()},
    }
    try:
        send_to_users_now([callee.pk], event)
    except BROADCAST_ERRORS as exc:
        Call.objects.filter(pk=call.pk).delete()
        logger.warning("call from user %s not placed: could not ring (%s)", caller.pk, exc)
        raise CallUnavailable() from exc
    logger.info("call %s started by user %s to user %s", call.id, caller.pk, callee.pk)
    return call


def call_join(
    *, participant: Participant, channel_name: str, resume: bool = False
) -> tuple[Call, list[Participant], bool]:
    """Put this device in the call; returns the call, the peers present, and whether this was a
    resume (the device was already in the call and its page kept its peer connection).

    A resume keeps the participant's join time and connection report: the call record is not
    rewritten when a socket comes back.
    """
    now = timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=participant.call_id)
        if call.state == CallState.ENDED:
            raise CallError("call_ended", "This call has ended.")
        current = Participant.objects.select_for_update().get(pk=participant.pk)
        resumed = resume and current.state in (
            ParticipantState.JOINED,
            ParticipantState.RECONNECTING,
        )
        fields: dict = {
            "channel_name": channel_name,
            "state": ParticipantState.JOINED,
            "reconnecting_since": None,
            "left_at": None,
        }
        if not resumed:
            fields["joined_at"] = now
        Participant.objects.filter(pk=participant.pk).update(**fields)
        peers = peers_present(call_id=call.pk, user=participant.user_id)
        if peers and call.state == CallState.RINGING:
            call.state = CallState.ACTIVE
            call.answered_at = now
            call.save(update_fields=["state", "answered_at"])
        send_to_channels_on_commit(
            [p.channel_name for p in peers],
            {
                "type": "call.peer_joined",
                "call": str(call.id),
                "user": participant.user_id,
                "resumed": resumed,
            },
        )
        if participant.role == ParticipantRole.CALLEE and not resumed:
            # Other devices of the callee stop ringing.
            send_to_users_on_commit(
                [participant.user_id], {"type": "call.answered", "call": str(call.id)}
            )
    return call, peers, resumed


def call_disconnected(*, call_id, user, channel_name: str) -> bool:
    """This device's socket closed (cleanly or not): it is `reconnecting`, the peers are told,
    and the grace window (SIGNALING_GRACE_SECONDS) starts. Returns False when the device was
    not in the call on that socket (it left, or already came back on another one)."""
    with transaction.atomic():
        updated = Participant.objects.filter(
            call_id=call_id, user=user, channel_name=channel_name, state=ParticipantState.JOINED
        ).update(state=ParticipantState.RECONNECTING, reconnecting_since=timezone.now())
        if not updated:
            return False
        _tell_peers(call_id, user.pk, "call.peer_reconnecting")
    return True


def participants_disconnect_node(*, node: str) -> int:
    """A server process died: every device it held becomes `reconnecting`, as if its socket had
    closed. Returns how many participants moved."""
    moved = 0
    prefix = node + "!"
    for p in Participant.objects.select_related("user").filter(
        state=ParticipantState.JOINED, channel_name__startswith=prefix
    ):
        moved += call_disconnected(call_id=p.call_id, user=p.user, channel_name=p.channel_name)
    return moved


def _tell_peers(call_id, user_id: int, event_type: str) -> None:
    peers = (
        Participant.objects.filter(
            call_id=call_id, state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING]
        )
        .exclude(user_id=user_id)
        .exclude(channel_name="")
    )
    send_to_channels_on_commit(
        [p.channel_name for p in peers],
        {"type": event_type, "call": str(call_id), "user": user_id},
    )


def call_leave(*, call_id, user, channel_name: str) -> None:
    """This device left the call (it said so); the peer is told."""
    with transaction.atomic():
        updated = Participant.objects.filter(
            call_id=call_id,
            user=user,
            channel_name=channel_name,
            state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING],
        ).update(state=ParticipantState.LEFT, left_at=timezone.now(), reconnecting_since=None)
        if not updated:
            return
        _tell_peers(call_id, user.pk, "call.peer_left")


def call_end(*, call_id, user=None, reason: str = EndReason.HANGUP) -> Call:
    """End the call for everyone in it: every device in it, and every device still ringing.
    `user` is who ended it; None when the platform did (no answer, a connection that was lost)."""
    now = timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call_id)
        if call.state == CallState.ENDED:
            return call
        call.state = CallState.ENDED
        call.ended_at = now
        call.end_reason = reason
        call.save(update_fields=["state", "ended_at", "end_reason"])
        participants = list(Participant.objects.filter(call=call))
        Participant.objects.filter(
            call=call, state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING]
        ).update(state=ParticipantState.LEFT, left_at=now, reconnecting_since=None)
        Participant.objects.filter(call=call, state=ParticipantState.RINGING).update(
            state=ParticipantState.LEFT
        )
        by = user.pk if user is not None else None
        event = {"type": "call.ended", "call": str(call.id), "by": by, "reason": reason}
        send_to_channels_on_commit([p.channel_name for p in participants if p.channel_name], event)
        send_to_users_on_commit([p.user_id for p in participants], event)
    logger.info("call %s ended by %s (%s)", call.id, f"user {by}" if by else "the platform", reason)
    return call


def calls_expire(*, now=None) -> dict:
    """The clock's part of the call state machine, run every few seconds by the reaper task:

    - a device `reconnecting` for longer than SIGNALING_GRACE_SECONDS has left, and its call
      ends (`connection_lost`, or `cancelled` when the caller's device vanished while ringing);
    - a call still ringing after CALL_RING_TIMEOUT ends with `no_answer`.

    Each step is claimed with a conditional UPDATE, so several reapers can run at once.
    """
    now = now or timezone.now()
    grace_cutoff = now - timedelta(seconds=settings.SIGNALING_GRACE_SECONDS)
    gone = list(
        Participant.objects.select_related("call").filter(
            state=ParticipantState.RECONNECTING, reconnecting_since__lt=grace_cutoff
        )
    )
    left = 0
    for p in gone:
        with transaction.atomic():
            claimed = Participant.objects.filter(
                pk=p.pk,
                state=ParticipantState.RECONNECTING,
                reconnecting_since=p.reconnecting_since,
            ).update(
                state=ParticipantState.LEFT, left_at=p.reconnecting_since, reconnecting_since=None
            )
            if not claimed:
                continue
            left += 1
            _tell_peers(p.call_id, p.user_id, "call.peer_left")
        reason = (
            EndReason.CANCELLED
            if p.call.state == CallState.RINGING and p.role == ParticipantRole.CALLER
            else EndReason.CONNECTION_LOST
        )
        call_end(call_id=p.call_id, user=None, reason=reason)
    ring_cutoff = now - timedelta(seconds=settings.CALL_RING_TIMEOUT)
    unanswered = list(
        Call.objects.filter(state=CallState.RINGING, created_at__lt=ring_cutoff).values_list(
            "pk", flat=True
        )
    )
    for call_id in unanswered:
        call_end(call_id=call_id, user=None, reason=EndReason.NO_ANSWER)
    return {"left": left, "no_answer": len(unanswered)}


def participant_report(
    *,
    participant: Participant,
    connection_type: str,
    relay_url: str = "",
    rtt_ms: float | None = None,
) -> Participant:
    """Store what the device's getStats() says about its selected candidate pair."""
    relay = None
    if connection_type == ConnectionType.RELAY and relay_url:
        # Only relays this user was actually given count; a client can't claim another one.
        granted = Relay.objects.filter(grants__user_id=participant.user_id).distinct()
        relay = next((r for r in granted if relay_url in r.urls), None)
    participant.connection_type = connection_type
    participant.relay = relay
    participant.relay_url = relay_url[:300] if connection_type == ConnectionType.RELAY else ""
    participant.rtt_ms = rtt_ms
    participant.reported_at = timezone.now()
    participant.save(
        update_fields=["connection_type", "relay", "relay_url", "rtt_ms", "reported_at"]
    )
    return participant
