"""The call state machine: start (glare, busy, do-not-disturb), accept, decline, cancel, join,
take-over, drop and resume, leave, end, expiry, and what devices report (media, quality).

Every transition is stored with its time (CallEvent) and announced to device sessions after commit.

Services assume the caller is authorized (views and consumers check membership first) and do
their work atomically; broadcasts go out only after commit.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import Block
from integrations.webhooks import webhook_emit
from relays.selectors import network_type_seen, relay_given_to
from relays.services import ice_servers_issue, relay_rtt_observe
from signaling.broadcast import (
    BROADCAST_ERRORS,
    send_to_sessions_on_commit,
    send_to_users_now,
    send_to_users_on_commit,
)

from .models import (
    LIVE_STATES,
    MISSED_REASONS,
    AssignedRelay,
    Call,
    CallEvent,
    CallKind,
    CallState,
    ChatMessage,
    ConnectionType,
    EndReason,
    Participant,
    ParticipantRole,
    ParticipantState,
    QualitySample,
    quality_grade,
)
from .selectors import call_peer_relays, missed_unseen_for, participant_for, peers_reachable

# Who answers a ringing participant: the callee of a call, or someone invited into one.
ANSWERING_ROLES = (ParticipantRole.CALLEE, ParticipantRole.INVITEE)

logger = logging.getLogger(__name__)


class Joined(NamedTuple):
    """A device in the call: the call, the peers present as its join read them (under the
    call's lock), whether it was a resume, and the join's step (see _record): every frame
    about a peer with a smaller step is older than that list."""

    call: Call
    peers: list[Participant]
    resumed: bool
    step: int


class CallError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class CallUnavailable(CallError):
    """The call could not be rung (Redis is unreachable); nothing was stored."""

    def __init__(self, message: str = "Calls can't be placed right now; try again in a moment."):
        super().__init__("unavailable", message)


def _record(call_id, name: str, *, user=None, user_id=None, detail: str = "", at=None) -> int:
    """Store a transition, and move the call's `updated_at` (callers hold the call's row lock,
    or made the call in this transaction: the lock order stays call, then participants).

    Returns the event's id: the transition's `step`. Taken under the call's lock, a call's steps
    grow in the order its transitions commit, so the frames that announce them carry it: they
    are delivered by whichever process made the change (a consumer, the reaper's thread, a
    worker), and can reach a device in another order than they happened (issue: a reaper's late
    `peer-reconnecting` after the peer's own `peer-joined` left a page at "signaling dropped")."""
    at = at or timezone.now()
    event = CallEvent.objects.create(
        call_id=call_id,
        name=name,
        user_id=user.pk if user is not None else user_id,
        detail=detail[:120],
        at=at,
    )
    Call.objects.filter(pk=call_id).update(updated_at=at)
    hook = WEBHOOK_EVENTS.get(name)
    if hook is not None:
        _webhook(call_id, hook, user_id=user.pk if user is not None else user_id, detail=detail)
    return event.pk


# Transitions that integrators hear about (integrations.webhooks), by CallEvent name.
WEBHOOK_EVENTS = {
    CallState.RINGING: "call.started",
    CallState.CONNECTING: "call.answered",
    CallState.ENDED: "call.ended",
    "joined": "participant.joined",
    "left": "participant.left",
}


def _webhook(call_id, event_type: str, *, user_id, detail: str) -> None:
    """Record the webhook for an integrator's call, in the transition's transaction (outbox)."""
    row = (
        Call.objects.filter(pk=call_id)
        .values("kind", "state", "end_reason", "created_by__integrator_id")
        .first()
    )
    if row is None or row["created_by__integrator_id"] is None:
        return  # the site's own people's calls: no integrator to tell
    data: dict = {"call": {"id": str(call_id), "kind": row["kind"], "state": row["state"]}}
    if event_type == "call.ended":
        data["reason"] = row["end_reason"]
    if user_id is not None:
        participant = (
            Participant.objects.filter(call_id=call_id, user_id=user_id)
            .values("user__external_id", "role")
            .first()
        )
        if participant is not None:
            data["participant"] = {
                "externalId": participant["user__external_id"],
                "role": participant["role"],
            }
    webhook_emit(event_type, data, integrator_id=row["created_by__integrator_id"])


def _sessions(participants) -> list[str]:
    """The device sessions of the participants whose device is (or may come back) in the call."""
    return [
        p.session
        for p in participants
        if p.session and p.state in (ParticipantState.JOINED, ParticipantState.RECONNECTING)
    ]


def _set_state(call: Call, state: str, *, at) -> None:
    """Move a locked call to `state`, store the step, and tell the devices in it."""
    call.state = state
    fields = ["state"]
    if state == CallState.CONNECTING:
        call.answered_at = at
        fields.append("answered_at")
    elif state == CallState.CONNECTED:
        call.connected_at = at
        fields.append("connected_at")
    call.save(update_fields=fields)
    step = _record(call.pk, state, at=at)
    send_to_sessions_on_commit(
        _sessions(Participant.objects.filter(call=call)),
        "state",
        call=call.pk,
        body={"state": state, "at": at.isoformat(), "step": step},
    )


def _callee_busy(callee) -> bool:
    """In a call right now: joined or reconnecting in a call that was answered and goes on."""
    return Participant.objects.filter(
        user=callee,
        state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING],
        call__state__in=LIVE_STATES,
    ).exists()


def call_start(*, caller, callee, kind: str = CallKind.VIDEO) -> Call:
    """Ring `callee` for `caller` and return the call.

    - a callee who blocked the caller is unavailable (CallError, nothing stored);
    - glare: when the callee's own call to the caller still rings, that call is returned (its
      `created_by` is the callee): the caller answers it instead of starting a second one;
    - a busy callee (in a call) or one on do-not-disturb is not rung: the call is stored already
      ended (`busy`, or `no_answer` and missed);
    - otherwise every device of the callee rings. A call is either rung or not created: when the
      ring can't go out (the channel layer is unreachable) the call is deleted again and
      CallUnavailable raised.
    """
    if caller.pk == callee.pk:
        raise CallError("bad_callee", "You can't call yourself.")
    if not callee.is_active or not caller.can_reach(callee):
        # Another integrator's user (or one of this site's people, for an integrator's user)
        # looks the same as one that can't take calls: nothing tells them apart.
        raise CallError("bad_callee", "That account can't take calls.")
    if Block.objects.filter(blocker=callee, blocked=caller).exists():
        raise CallError("unavailable", "That person is unavailable.")
    now = timezone.now()
    with transaction.atomic():
        # Both users locked in a fixed order: two people calling each other at the same moment
        # are serialized here, and the second one finds the first one's call (glare).
        list(
            get_user_model()
            .objects.select_for_update()
            .filter(pk__in=[caller.pk, callee.pk])
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        reverse = (
            Call.objects.filter(
                state=CallState.RINGING,
                created_by=callee,
                participants__user=caller,
                participants__role=ParticipantRole.CALLEE,
                participants__state=ParticipantState.RINGING,
            )
            .order_by("-created_at")
            .first()
        )
        if reverse is not None:
            _record(reverse.pk, "glare", user=caller, detail="called back while it rang")
            logger.info("call %s: glare, user %s answers it", reverse.pk, caller.pk)
            return reverse
        call = Call.objects.create(created_by=caller, kind=kind)
        Participant.objects.bulk_create(
            [
                Participant(call=call, user=caller, role=ParticipantRole.CALLER),
                Participant(call=call, user=callee, role=ParticipantRole.CALLEE),
            ]
        )
        _record(call.pk, CallState.RINGING, user=caller, at=now)
        ended_reason = None
        if _callee_busy(callee):
            ended_reason = EndReason.BUSY
        elif callee.do_not_disturb:
            ended_reason = EndReason.NO_ANSWER
        if ended_reason is not None:
            _end_locked(
                call, user=None, reason=ended_reason, at=now, detail="never rang", announce=False
            )
    if call.state == CallState.ENDED:
        logger.info("call %s from user %s not rung: %s", call.id, caller.pk, call.end_reason)
        return call
    event = {
        "type": "call.incoming",
        "call": str(call.id),
        "kind": call.kind,
        "from": caller.card(),
    }
    try:
        send_to_users_now([callee.pk], event)
    except BROADCAST_ERRORS as exc:
        Call.objects.filter(pk=call.pk).delete()
        logger.warning("call from user %s not placed: could not ring (%s)", caller.pk, exc)
        raise CallUnavailable() from exc
    logger.info("call %s started by user %s to user %s", call.id, caller.pk, callee.pk)
    return call


def _lock_call(call_id) -> Call:
    """Lock the call's row. Every transaction that writes a call's participants takes this lock
    first, and only then the participants' rows: one lock order, so two writers of one call
    queue instead of deadlocking. (A participant's row written first, and the call's row
    locked after, as a call event's foreign key does, deadlocks with a writer that went the
    other way: PostgreSQL then aborts one of them.)"""
    return Call.objects.select_for_update().get(pk=call_id)


def _lock(participant: Participant) -> tuple[Call, Participant]:
    call = _lock_call(participant.call_id)
    if call.state == CallState.ENDED:
        raise CallError("call_ended", "This call has ended.")
    current = Participant.objects.select_for_update().get(pk=participant.pk)
    return call, current


def _hold(current: Participant, *, channel_name: str, session: str, now, keep_join: bool) -> None:
    """This device session now holds the participant, joined."""
    fields: dict = {
        "channel_name": channel_name,
        "session": session,
        "state": ParticipantState.JOINED,
        "reconnecting_since": None,
        "left_at": None,
    }
    if not keep_join:
        fields["joined_at"] = now
    Participant.objects.filter(pk=current.pk).update(**fields)
    for key, value in fields.items():
        setattr(current, key, value)


def _announce_joined(
    call: Call, current: Participant, *, resumed: bool, step: int
) -> list[Participant]:
    """Tell the other devices in the call that this one joined (at `step`, see _record);
    returns them (joined or coming back, with their session). Run under the call's lock, so of
    two devices joining at once the second sees the first."""
    peers = peers_reachable(call_id=call.pk, user=current.user_id)
    send_to_sessions_on_commit(
        [p.session for p in peers],
        "peer-joined",
        call=call.pk,
        body={
            "user": current.user_id,
            "session": current.session,
            "resumed": resumed,
            "username": current.user.username,
            "name": current.user.label(),
            "step": step,
        },
    )
    return peers


def call_accept(
    *, participant: Participant, channel_name: str, session: str, video: bool = True
) -> Joined:
    """The callee answers on this device. The first answer wins: the call is `connecting`, the
    callee's other devices stop ringing (told `answered`, elsewhere), the caller is told."""
    now = timezone.now()
    with transaction.atomic():
        call, current = _lock(participant)
        if current.role not in ANSWERING_ROLES:
            raise CallError("wrong_role", "Only the person called can answer.")
        rings = call.state == CallState.RINGING or current.role == ParticipantRole.INVITEE
        if current.state != ParticipantState.RINGING or not rings:
            if current.state in (ParticipantState.JOINED, ParticipantState.RECONNECTING):
                raise CallError("answered_elsewhere", "This call was answered on another device.")
            raise CallError("not_ringing", "This call is not ringing any more.")
        _hold(current, channel_name=channel_name, session=session, now=now, keep_join=False)
        Participant.objects.filter(pk=current.pk).update(video=video)
        step = _record(
            call.pk, "accepted", user=current.user, at=now, detail="" if video else "no camera"
        )
        if call.state == CallState.RINGING:
            _set_state(call, CallState.CONNECTING, at=now)
        peers = _announce_joined(call, current, resumed=False, step=step)
        send_to_users_on_commit(
            [current.user_id],
            {"type": "call.answered", "call": str(call.pk), "session": session},
        )
    return Joined(call, peers, False, step)


def call_join(
    *,
    participant: Participant,
    channel_name: str,
    session: str = "",
    resume: bool = False,
    replaces: str = "",
) -> Joined:
    """Put this device in the call; returns the call, the peers present, whether this was a
    resume (the device was already in the call and its page kept its peer connection), and the
    step.

    The callee joining a ringing call answers it (call_accept). A participant that another
    live device holds is refused (`in_call_elsewhere`): only take-over moves it. A resume keeps
    the participant's join time and connection report: the call record is not rewritten when
    a socket comes back.
    """
    if participant.role in ANSWERING_ROLES and participant.state == ParticipantState.RINGING:
        return call_accept(participant=participant, channel_name=channel_name, session=session)
    now = timezone.now()
    with transaction.atomic():
        call, current = _lock(participant)
        if current.state == ParticipantState.RINGING and current.role in ANSWERING_ROLES:
            raise CallError("not_ringing", "This call is not ringing any more.")
        held_elsewhere = (
            current.state == ParticipantState.JOINED
            and current.session
            and current.session not in (session, replaces)
        )
        if held_elsewhere:
            raise CallError(
                "in_call_elsewhere",
                "This call is on another of your devices; move it here to take it over.",
            )
        resumed = resume and current.state in (
            ParticipantState.JOINED,
            ParticipantState.RECONNECTING,
        )
        first = current.joined_at is None
        _hold(current, channel_name=channel_name, session=session, now=now, keep_join=resumed)
        step = _record(
            call.pk,
            "resumed" if resumed else ("joined" if first else "rejoined"),
            user=current.user,
            at=now,
        )
        peers = _announce_joined(call, current, resumed=resumed, step=step)
        if peers and call.state == CallState.RINGING:
            _set_state(call, CallState.CONNECTING, at=now)
    return Joined(call, peers, resumed, step)


def call_take_over(*, participant: Participant, channel_name: str, session: str) -> Joined:
    """Move the user's place in a running call to this device: the old device is told
    (`taken-over`) and stops, the peer renegotiates with this one."""
    now = timezone.now()
    with transaction.atomic():
        call, current = _lock(participant)
        if current.state == ParticipantState.RINGING:
            raise CallError("not_joined", "Answer the call first.")
        old = current.session
        _hold(current, channel_name=channel_name, session=session, now=now, keep_join=True)
        step = _record(call.pk, "taken_over", user=current.user, at=now)
        if old and old != session:
            send_to_sessions_on_commit([old], "taken-over", call=call.pk)
        peers = _announce_joined(call, current, resumed=False, step=step)
    return Joined(call, peers, False, step)


def call_decline(*, participant: Participant) -> Call:
    """The callee turns the call down (on any device): it ends with `declined` for everyone.
    An invitee's decline only ends their invitation: the call goes on."""
    if participant.role == ParticipantRole.INVITEE:
        return _end_invitation(participant, EndReason.DECLINED)
    return _end_ringing(participant, ParticipantRole.CALLEE, EndReason.DECLINED)


def _end_invitation(participant: Participant, reason: str, *, at=None) -> Call:
    """An invitee stops ringing without joining (declined, or no answer): they are `left`, the
    people in the call are told (`invite-ended`), and the invitee's devices stop ringing."""
    now = at or timezone.now()
    with transaction.atomic():
        call, current = _lock(participant)
        if current.state != ParticipantState.RINGING:
            raise CallError("not_ringing", "This call is not ringing any more.")
        Participant.objects.filter(pk=current.pk).update(state=ParticipantState.LEFT, left_at=now)
        step = _record(call.pk, f"invite_{reason}", user_id=current.user_id, at=now)
        _tell_peers(
            call.pk,
            current.user_id,
            "invite-ended",
            {"user": current.user_id, "reason": reason},
            step=step,
        )
        send_to_users_on_commit(
            [current.user_id],
            {"type": "call.ended", "call": str(call.pk), "by": None, "reason": reason},
        )
    return call


def call_invite(*, participant: Participant, invitee) -> Participant:
    """Ask `invitee` into a call that `participant` (joined on their device) is in: every device
    of the invitee rings. Refused when the call is full (CALL_MAX_PARTICIPANTS people ringing or
    in it), when the invitee is in it already, busy, on do-not-disturb, blocked the inviter, or
    can't take calls. A person who left or declined can be asked again."""
    now = timezone.now()
    if not invitee.is_active or not participant.user.can_reach(invitee):
        raise CallError("bad_callee", "That account can't take calls.")
    if Block.objects.filter(blocker=invitee, blocked_id=participant.user_id).exists():
        raise CallError("unavailable", "That person is unavailable.")
    if invitee.do_not_disturb:
        raise CallError("unavailable", "That person is not taking calls right now.")
    with transaction.atomic():
        call, current = _lock(participant)
        if current.state not in (ParticipantState.JOINED, ParticipantState.RECONNECTING):
            raise CallError("not_joined", "Join the call before you invite anyone.")
        if call.state == CallState.RINGING:
            raise CallError("not_answered", "Invite others once the call is answered.")
        existing = Participant.objects.filter(call=call, user=invitee).first()
        if existing is not None and existing.state != ParticipantState.LEFT:
            raise CallError("already_in_call", "That person is in this call already.")
        taken = Participant.objects.filter(call=call).exclude(state=ParticipantState.LEFT).count()
        limit = settings.CALL_MAX_PARTICIPANTS
        if taken >= limit:
            raise CallError(
                "call_full", f"This call is full: at most {limit} people can be in it at once."
            )
        if _callee_busy(invitee):
            raise CallError("busy", "That person is in another call.")
        fields = {
            "role": ParticipantRole.INVITEE if existing is None else existing.role,
            "state": ParticipantState.RINGING,
            "invited_at": now,
            "invited_by_id": current.user_id,
            "left_at": None,
            "session": "",
            "channel_name": "",
        }
        if existing is None:
            invited = Participant.objects.create(call=call, user=invitee, **fields)
        else:
            Participant.objects.filter(pk=existing.pk).update(**fields)
            invited = Participant.objects.get(pk=existing.pk)
        step = _record(call.pk, "invited", user_id=invitee.pk, at=now, detail=f"by {current.user}")
        _tell_peers(
            call.pk,
            invitee.pk,
            "invited",
            {"user": invitee.card(), "by": current.user_id},
            step=step,
        )
        event = {
            "type": "call.incoming",
            "call": str(call.pk),
            "kind": call.kind,
            "from": current.user.card(),
            "group": True,
        }
        send_to_users_on_commit([invitee.pk], event)
    return invited


def call_cancel(*, participant: Participant) -> Call:
    """The caller gives up while it rings: it ends with `cancelled`, missed for the callee."""
    return _end_ringing(participant, ParticipantRole.CALLER, EndReason.CANCELLED)


def _end_ringing(participant: Participant, role: str, reason: str) -> Call:
    with transaction.atomic():
        call, current = _lock(participant)
        if current.role != role:
            raise CallError(
                "wrong_role",
                "Only the person called can decline."
                if role == ParticipantRole.CALLEE
                else "Only the caller can cancel.",
            )
        if call.state != CallState.RINGING:
            raise CallError("not_ringing", "This call is not ringing any more.")
        return _end_locked(call, user=current.user, reason=reason)


def call_hangup(*, participant: Participant, reason: str = EndReason.HANGUP) -> Call:
    """Someone hangs up. While it rings, the caller's hangup is a cancel and the callee's a
    decline (decided under the call's lock, so an answer that lands first makes it a hangup);
    `failed` says ICE failed on every path."""
    while_ringing = None
    if reason == EndReason.HANGUP:
        while_ringing = (
            EndReason.CANCELLED
            if participant.role == ParticipantRole.CALLER
            else EndReason.DECLINED
        )
    if _leave_group_call(participant):
        return Call.objects.get(pk=participant.call_id)
    return call_end(
        call_id=participant.call_id,
        user=participant.user,
        reason=reason,
        reason_while_ringing=while_ringing,
    )


def _goes_on_without(call_id, user_id) -> bool:
    """Two or more other people are in the call (joined, or coming back): it is a group call
    that goes on when this one goes."""
    return (
        Participant.objects.filter(
            call_id=call_id,
            state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING],
        )
        .exclude(user_id=user_id)
        .count()
        >= 2
    )


def _leave_group_call(participant: Participant) -> bool:
    """A hangup in a group call is a leave: the others go on (peer-left), and the devices of
    the one who hung up are told the call is over for them. False when it is not a group call
    (the hangup then ends the call for everyone)."""
    now = timezone.now()
    with transaction.atomic():
        call = _lock_call(participant.call_id)
        if call.state in (CallState.ENDED, CallState.RINGING):
            return False
        if not _goes_on_without(call.pk, participant.user_id):
            return False
        current = Participant.objects.select_for_update().get(pk=participant.pk)
        sessions = _sessions([current])
        Participant.objects.filter(pk=current.pk).update(
            state=ParticipantState.LEFT, left_at=now, reconnecting_since=None
        )
        step = _record(call.pk, "left", user_id=current.user_id, at=now, detail="hung up")
        _tell_peers(call.pk, current.user_id, "peer-left", {"user": current.user_id}, step=step)
        body = {"by": current.user_id, "reason": EndReason.HANGUP}
        send_to_sessions_on_commit(sessions, "hangup", call=call.pk, body=body)
    return True


def call_resume_session(
    *, user, session: str, channel_name: str
) -> list[tuple[str, list[Participant]]]:
    """A device session came back on a new socket: the calls it held are joined again (peers
    are told, `resumed`). Returns each call's id with its peers (as _announce_joined)."""
    now = timezone.now()
    resumed = []
    for p in Participant.objects.filter(
        user=user,
        session=session,
        state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING],
    ).exclude(call__state=CallState.ENDED):
        with transaction.atomic():
            try:
                call, current = _lock(p)
            except CallError:
                continue
            if current.session != session:
                continue
            _hold(current, channel_name=channel_name, session=session, now=now, keep_join=True)
            step = _record(call.pk, "resumed", user=user, at=now)
            peers = _announce_joined(call, current, resumed=True, step=step)
        resumed.append((str(p.call_id), peers))
    return resumed


def call_connected(*, participant: Participant) -> None:
    """A device reported its peer connection connected: the call is `connected`."""
    now = timezone.now()
    with transaction.atomic():
        call = _lock_call(participant.call_id)
        if call.state in (CallState.CONNECTING, CallState.RINGING):
            _set_state(call, CallState.CONNECTED, at=now)


def call_disconnected(*, call_id, user, channel_name: str) -> bool:
    """This device's socket closed (cleanly or not): it is `reconnecting`, the peers are told,
    and the grace window (SIGNALING_GRACE_SECONDS) starts. Returns False when the device was
    not in the call on that socket (it left, or already came back on another one)."""
    now = timezone.now()
    with transaction.atomic():
        _lock_call(call_id)
        updated = Participant.objects.filter(
            call_id=call_id, user=user, channel_name=channel_name, state=ParticipantState.JOINED
        ).update(state=ParticipantState.RECONNECTING, reconnecting_since=now)
        if not updated:
            return False
        step = _record(call_id, "reconnecting", user=user, at=now)
        _tell_peers(
            call_id,
            user.pk,
            "peer-reconnecting",
            {"user": user.pk, "graceSeconds": settings.SIGNALING_GRACE_SECONDS},
            step=step,
        )
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


def _tell_peers(call_id, user_id: int, frame: str, body: dict, *, step: int | None) -> None:
    """Push a frame about `user_id` into the other participants' device sessions, once
    committed, with the `step` of the transition it announces (see _record): None only for
    what is not a transition (media-state, which the device's own socket sends in order)."""
    if step is not None:
        body = {**body, "step": step}
    peers = Participant.objects.filter(call_id=call_id).exclude(user_id=user_id)
    send_to_sessions_on_commit(_sessions(peers), frame, call=call_id, body=body)


def call_leave(*, call_id, user, channel_name: str) -> None:
    """This device left the call (it said so); the peer is told."""
    now = timezone.now()
    with transaction.atomic():
        _lock_call(call_id)
        updated = Participant.objects.filter(
            call_id=call_id,
            user=user,
            channel_name=channel_name,
            state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING],
        ).update(state=ParticipantState.LEFT, left_at=now, reconnecting_since=None)
        if not updated:
            return
        step = _record(call_id, "left", user=user, at=now)
        _tell_peers(call_id, user.pk, "peer-left", {"user": user.pk}, step=step)


def participant_media(*, participant: Participant, audio: bool, video: bool, screen: bool) -> None:
    """The device's microphone, camera and screen share as it signaled them; peers are told."""
    with transaction.atomic():
        _lock_call(participant.call_id)
        Participant.objects.filter(pk=participant.pk).update(
            audio=audio, video=video, screen=screen
        )
        _tell_peers(
            participant.call_id,
            participant.user_id,
            "media-state",
            {"user": participant.user_id, "audio": audio, "video": video, "screen": screen},
            step=None,
        )


def _end_locked(
    call: Call, *, user, reason: str, at=None, detail: str = "", announce: bool = True
) -> Call:
    """End a call whose row is locked (or new): store it and tell every device (a call that
    never rang, busy or do-not-disturb, has nobody to tell)."""
    now = at or timezone.now()
    participants = list(Participant.objects.filter(call=call))
    sessions = _sessions(participants)
    call.state = CallState.ENDED
    call.ended_at = now
    call.end_reason = reason
    call.missed = reason in MISSED_REASONS
    call.save(update_fields=["state", "ended_at", "end_reason", "missed"])
    Participant.objects.filter(
        call=call, state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING]
    ).update(state=ParticipantState.LEFT, left_at=now, reconnecting_since=None)
    Participant.objects.filter(call=call, state=ParticipantState.RINGING).update(
        state=ParticipantState.LEFT
    )
    _record(call.pk, CallState.ENDED, user=user, at=now, detail=detail or reason)
    by = user.pk if user is not None else None
    body = {"by": by, "reason": reason}
    if not announce:
        return call
    send_to_sessions_on_commit(sessions, "hangup", call=call.pk, body=body)
    # Devices that ring (not in the call) hear it through the user's group.
    send_to_users_on_commit(
        [p.user_id for p in participants],
        {"type": "call.ended", "call": str(call.pk), **body},
    )
    logger.info("call %s ended by %s (%s)", call.pk, f"user {by}" if by else "the platform", reason)
    return call


def call_end(
    *, call_id, user=None, reason: str = EndReason.HANGUP, reason_while_ringing: str | None = None
) -> Call:
    """End the call for everyone in it: every device in it, and every device still ringing.
    `user` is who ended it; None when the platform did (no answer, a connection that was lost).
    `reason_while_ringing` replaces `reason` when the call, once locked, still rings."""
    with transaction.atomic():
        call = _lock_call(call_id)
        if call.state == CallState.ENDED:
            return call
        if call.state == CallState.RINGING and reason_while_ringing:
            reason = reason_while_ringing
        return _end_locked(call, user=user, reason=reason)


def calls_mark_missed_seen(*, user) -> int:
    """The callee opened their history: their missed calls are no longer counted as new."""
    return missed_unseen_for(user=user).update(missed_seen=True)


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
        Participant.objects.filter(
            state=ParticipantState.RECONNECTING, reconnecting_since__lt=grace_cutoff
        )
    )
    left = 0
    for p in gone:
        with transaction.atomic():
            _lock_call(p.call_id)
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
            step = _record(p.call_id, "left", user_id=p.user_id, at=now, detail="did not come back")
            _tell_peers(p.call_id, p.user_id, "peer-left", {"user": p.user_id}, step=step)
            goes_on = _goes_on_without(p.call_id, p.user_id)
        if goes_on:  # a group call: the others carry on
            continue
        call_end(
            call_id=p.call_id,
            user=None,
            reason=EndReason.CONNECTION_LOST,
            # The caller's device vanished while it rang: the caller gave up.
            reason_while_ringing=EndReason.CANCELLED if p.role == ParticipantRole.CALLER else None,
        )
    ring_cutoff = now - timedelta(seconds=settings.CALL_RING_TIMEOUT)
    unanswered = list(
        Call.objects.filter(state=CallState.RINGING, created_at__lt=ring_cutoff).values_list(
            "pk", flat=True
        )
    )
    for call_id in unanswered:
        call_end(call_id=call_id, user=None, reason=EndReason.NO_ANSWER)
    invitations = list(
        Participant.objects.filter(
            role=ParticipantRole.INVITEE,
            state=ParticipantState.RINGING,
            invited_at__lt=ring_cutoff,
        )
    )
    for p in invitations:
        with contextlib.suppress(CallError):  # answered, declined or ended meanwhile
            _end_invitation(p, EndReason.NO_ANSWER, at=now)
    return {"left": left, "no_answer": len(unanswered), "invites_unanswered": len(invitations)}


def chat_post(*, participant: Participant, text: str) -> ChatMessage:
    """A text message in the call, from a device in it: stored with the call, and sent to every
    device in the call (the sender's too: that is its confirmation, in order)."""
    with transaction.atomic():
        message = ChatMessage.objects.create(
            call_id=participant.call_id, user_id=participant.user_id, text=text
        )
        everyone = Participant.objects.filter(call_id=participant.call_id)
        send_to_sessions_on_commit(
            _sessions(everyone),
            "chat",
            call=participant.call_id,
            body={
                "id": message.pk,
                "user": participant.user_id,
                "name": participant.user.label(),
                "text": text,
                "at": message.at.isoformat(),
            },
        )
    return message


def chat_prune(*, now=None) -> int:
    """Delete chat messages older than CHAT_RETENTION_DAYS (0 keeps them). Returns how many."""
    days = settings.CHAT_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = ChatMessage.objects.filter(at__lt=cutoff).delete()
    return deleted


# One stored quality sample per participant per this many seconds; more are dropped.
STATS_MIN_INTERVAL = timedelta(seconds=2)


def participant_stats(
    *,
    participant: Participant,
    path: str,
    relay_url: str = "",
    rtt_ms: float | None = None,
    loss_pct: float | None = None,
    bitrate_kbps: float | None = None,
) -> QualitySample | None:
    """Store one quality sample from the device's getStats(); None when it came too soon after
    the last one. The first sample of a call that was connecting makes it `connected`."""
    now = timezone.now()
    last = (
        QualitySample.objects.filter(participant=participant).order_by("-at").values("at").first()
    )
    if last is not None and now - last["at"] < STATS_MIN_INTERVAL:
        return None
    sample = QualitySample.objects.create(
        participant=participant,
        at=now,
        path=path,
        relay_url=relay_url[:300] if path == ConnectionType.RELAY else "",
        rtt_ms=rtt_ms,
        loss_pct=loss_pct,
        bitrate_kbps=bitrate_kbps,
        grade=quality_grade(rtt_ms=rtt_ms, loss_pct=loss_pct),
    )
    if participant.call.state == CallState.CONNECTING:
        call_connected(participant=participant)
    return sample


def participant_report(
    *,
    participant: Participant,
    connection_type: str,
    relay_url: str = "",
    rtt_ms: float | None = None,
    network: str = "",
) -> Participant:
    """Store what the device's getStats() says about its selected candidate pair. Relayed, its
    round trip also feeds that relay's figure for the device's `network` (relays.scoring)."""
    relay = None
    if connection_type == ConnectionType.RELAY and relay_url:
        # Only relays this user was actually given count; a client can't claim another one.
        relay = relay_given_to(user_id=participant.user_id, url=relay_url)
    participant.connection_type = connection_type
    participant.relay = relay
    participant.relay_url = relay_url[:300] if connection_type == ConnectionType.RELAY else ""
    participant.rtt_ms = rtt_ms
    participant.reported_at = timezone.now()
    participant.network_type = network_type_seen(user_id=participant.user_id, network=network)
    participant.save(
        update_fields=[
            "connection_type",
            "relay",
            "relay_url",
            "rtt_ms",
            "reported_at",
            "network_type",
        ]
    )
    Call.objects.filter(pk=participant.call_id).update(updated_at=participant.reported_at)
    if relay is not None and rtt_ms is not None:
        relay_rtt_observe(relay=relay, network=network, rtt_ms=rtt_ms)
    call_connected(participant=participant)
    return participant


class NotInCall(Exception):
    """Relays for a call were asked for by someone who isn't in it (or it doesn't exist)."""

    code = "not_found"


def call_ice_issue(
    *, user, call_id, region: str = "", ip: str | None = None, keep: str = ""
) -> dict:
    """Relays and credentials for `user`'s device in this call, chosen with the call in mind
    (relays.scoring: the relay the other side holds, else one near it), and recorded on the
    participant (`assigned_relays`). Raises NotInCall for a call the user isn't in."""
    try:
        call_uuid = uuid.UUID(str(call_id))
    except ValueError as exc:
        raise NotInCall("No such call.") from exc
    participant = participant_for(call_id=call_uuid, user=user)
    if participant is None:
        raise NotInCall("No such call.")
    payload = ice_servers_issue(
        user=user,
        region=region,
        ip=ip,
        keep=keep,
        peers=call_peer_relays(call_id=call_uuid, user=user),
    )
    with transaction.atomic():
        # Under the call's lock (the one lock order for a call's participants): two devices of
        # one user asking at once (two ringing pages, early ICE) each deleted the other's rows
        # unseen, then both inserted, and the second broke the unique relay per participant
        # (a 500).
        _lock_call(call_uuid)
        AssignedRelay.objects.filter(participant=participant).delete()
        AssignedRelay.objects.bulk_create(
            [
                AssignedRelay(participant=participant, relay_id=r["id"], position=i)
                for i, r in enumerate(payload["relays"])
            ]
        )
    return payload
