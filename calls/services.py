"""Writes to calls: start, join, leave, end, and connection reports.

Services assume the caller is authorized (views and consumers check membership first) and do
their work atomically; broadcasts go out only after commit.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from relays.models import Relay
from signaling.broadcast import send_to_channels_on_commit, send_to_users_on_commit

from .models import Call, CallState, ConnectionType, Participant, ParticipantRole

logger = logging.getLogger(__name__)


class CallError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def call_start(*, caller, callee) -> Call:
    """Create a call from caller to callee and ring every device of the callee."""
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
        send_to_users_on_commit(
            [callee.pk],
            {
                "type": "call.incoming",
                "call": str(call.id),
                "from": {"id": caller.pk, "username": caller.username, "name": caller.label()},
            },
        )
    logger.info("call %s started by user %s to user %s", call.id, caller.pk, callee.pk)
    return call


def call_join(*, participant: Participant, channel_name: str) -> tuple[Call, list[Participant]]:
    """Put this device in the call; returns the call and the peers already present."""
    now = timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=participant.call_id)
        if call.state == CallState.ENDED:
            raise CallError("call_ended", "This call has ended.")
        Participant.objects.filter(pk=participant.pk).update(
            channel_name=channel_name, joined_at=now, left_at=None
        )
        peers = list(
            Participant.objects.select_related("user")
            .filter(call=call, left_at__isnull=True, joined_at__isnull=False)
            .exclude(pk=participant.pk)
            .exclude(channel_name="")
        )
        if peers and call.state == CallState.RINGING:
            call.state = CallState.ACTIVE
            call.answered_at = now
            call.save(update_fields=["state", "answered_at"])
        send_to_channels_on_commit(
            [p.channel_name for p in peers],
            {"type": "call.peer_joined", "call": str(call.id), "user": participant.user_id},
        )
        if participant.role == ParticipantRole.CALLEE:
            # Other devices of the callee stop ringing.
            send_to_users_on_commit(
                [participant.user_id], {"type": "call.answered", "call": str(call.id)}
            )
    return call, peers


def call_leave(*, call_id, user, channel_name: str) -> None:
    """This device left the call (closed the page or the socket dropped); the peer is told."""
    with transaction.atomic():
        updated = Participant.objects.filter(
            call_id=call_id, user=user, channel_name=channel_name, left_at__isnull=True
        ).update(left_at=timezone.now())
        if not updated:
            return
        peers = (
            Participant.objects.filter(call_id=call_id, left_at__isnull=True)
            .exclude(user=user)
            .exclude(channel_name="")
        )
        send_to_channels_on_commit(
            [p.channel_name for p in peers],
            {"type": "call.peer_left", "call": str(call_id), "user": user.pk},
        )


def call_end(*, call_id, user, reason: str = "hangup") -> Call:
    """End the call for everyone in it: every device in it, and every device still ringing."""
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
        Participant.objects.filter(call=call, left_at__isnull=True, joined_at__isnull=False).update(
            left_at=now
        )
        event = {"type": "call.ended", "call": str(call.id), "by": user.pk, "reason": reason}
        send_to_channels_on_commit([p.channel_name for p in participants if p.channel_name], event)
        send_to_users_on_commit([p.user_id for p in participants], event)
    logger.info("call %s ended by user %s (%s)", call.id, user.pk, reason)
    return call


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
