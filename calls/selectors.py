"""Reads of calls: membership, the peer to signal, history."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Prefetch, QuerySet

from .models import Call, CallState, Participant, ParticipantRole, ParticipantState


def participant_for(*, call_id, user) -> Participant | None:
    """The user's participation in the call, or None when the call doesn't exist or they aren't in it."""
    return Participant.objects.select_related("call").filter(call_id=call_id, user=user).first()


def peers_present(*, call_id, user) -> list[Participant]:
    """The other participants whose device is in the call right now (Participant.present, as a
    query: joined, with a socket; not reconnecting, not left)."""
    return list(
        Participant.objects.select_related("user")
        .filter(call_id=call_id, state=ParticipantState.JOINED)
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
            state=CallState.RINGING,
            participants__user=user,
            participants__role=ParticipantRole.CALLEE,
            participants__state=ParticipantState.RINGING,
        )
        .select_related("created_by")
        .order_by("-created_at")
    )


class NotCallable(ValueError):
    """The username names nobody this caller can ring; the message says why."""


def callee_for(*, caller, username: str):
    """The active user a caller may ring by this username (any case). The one rule that the web
    form and the API both apply; raises NotCallable with a message for the caller."""
    name = username.strip()
    user = get_user_model().objects.filter(username__iexact=name, is_active=True).first()
    if user is None:
        raise NotCallable(f"There is no one called {name!r} here.")
    if user.pk == caller.pk:
        raise NotCallable("You can't call yourself.")
    return user
