"""Reads of calls: membership, the peer to signal, history."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from .models import Call, Participant


def participant_for(*, call_id, user) -> Participant | None:
    """The user's participation in the call, or None when the call doesn't exist or they aren't in it."""
    return Participant.objects.select_related("call").filter(call_id=call_id, user=user).first()


def peers_present(*, call_id, user) -> list[Participant]:
    """The other participants whose device is in the call right now."""
    return list(
        Participant.objects.select_related("user")
        .filter(call_id=call_id, left_at__isnull=True, joined_at__isnull=False)
        .exclude(user=user)
        .exclude(channel_name="")
    )


def call_history_for(*, user) -> QuerySet[Call]:
    return (
        Call.objects.filter(participants__user=user)
        .prefetch_related(
            Prefetch("participants", queryset=Participant.objects.select_related("user", "relay"))
        )
        .order_by("-created_at")
        .distinct()
    )


def calls_ringing_for(*, user) -> QuerySet[Call]:
    """Calls that ring this user right now: they are the callee and haven't joined yet."""
    return (
        Call.objects.filter(
            state="ringing",
            participants__user=user,
            participants__role="callee",
            participants__joined_at__isnull=True,
        )
        .select_related("created_by")
        .order_by("-created_at")
    )
