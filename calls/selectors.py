"""Reads of calls: membership, the peer to signal, history."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta

from django.contrib.auth import get_user_model
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from .models import (
    LIVE_STATES,
    AssignedRelay,
    Call,
    CallState,
    EndReason,
    Participant,
    ParticipantRole,
    ParticipantState,
    QualitySample,
    call_path,
    took_part,
)


def participant_for(*, call_id, user) -> Participant | None:
    """The user's participation in the call, or None when the call doesn't exist or they aren't in it."""
    return Participant.objects.select_related("call").filter(call_id=call_id, user=user).first()


def call_peer_relays(*, call_id, user=None) -> list[str]:
    """The relay each of the call's other participants (those not gone) uses, as ids: the one
    its device reported using, else the first it was handed. With no `user`, everyone's (the
    staff's explain page, for a sample caller joining the call)."""
    others = Participant.objects.filter(call_id=call_id).exclude(state=ParticipantState.LEFT)
    if user is not None:
        others = others.exclude(user=user)
    used = dict(others.values_list("pk", "relay_id"))
    handed: dict[int, uuid.UUID] = {}
    for participant_id, relay_id in (
        AssignedRelay.objects.filter(participant_id__in=used)
        .order_by("participant_id", "position")
        .values_list("participant_id", "relay_id")
    ):
        handed.setdefault(participant_id, relay_id)
    chosen = (used[p] or handed.get(p) for p in sorted(used))
    return list(dict.fromkeys(str(r) for r in chosen if r is not None))


def relays_of_call(call: str) -> list[str]:
    """The relays a call's participants hold (a sample caller joining it is scored with them
    in mind); ValueError for what isn't a call."""
    if not call:
        return []
    try:
        call_id = uuid.UUID(call)
    except ValueError:
        raise ValueError(f"{call!r} is not a call id.") from None
    if not Call.objects.filter(pk=call_id).exists():
        raise ValueError(f"No call {call}.")
    return call_peer_relays(call_id=call_id)


def peers_reachable(*, call_id, user) -> list[Participant]:
    """The other participants whose device is in the call (joined) or coming back to it
    (reconnecting, in its grace window): the device sessions that in-call frames go to."""
    return list(
        Participant.objects.select_related("user")
        .filter(
            call_id=call_id,
            state__in=[ParticipantState.JOINED, ParticipantState.RECONNECTING],
        )
        .exclude(user=user)
        .exclude(session="")
    )


def early_peers_for(*, participant: Participant) -> list[Participant] | None:
    """The devices a ringing callee's device negotiates with before anyone answers (early ICE,
    docs/signaling.md): the call's devices that joined, while the call rings this participant.
    None when it doesn't (answered, ended, or an invitation into a call that goes on, which
    negotiates after the answer)."""
    call = participant.call
    if (
        call.state != CallState.RINGING
        or participant.role != ParticipantRole.CALLEE
        or participant.state != ParticipantState.RINGING
    ):
        return None
    return peers_reachable(call_id=call.pk, user=participant.user_id)


def call_history_for(*, user) -> QuerySet[Call]:
    return (
        Call.objects.filter(participants__user=user)
        .select_related("created_by")
        .prefetch_related(
            Prefetch("participants", queryset=Participant.objects.select_related("user", "relay"))
        )
        .order_by("-created_at")
        .distinct()
    )


def calls_of_integrator(*, integrator) -> QuerySet[Call]:
    """The calls of an integrator's users (API keys see these, and no others)."""
    return (
        Call.objects.filter(
            pk__in=Participant.objects.filter(user__integrator=integrator).values("call_id")
        )
        .select_related("created_by")
        .prefetch_related(
            Prefetch("participants", queryset=Participant.objects.select_related("user", "relay"))
        )
        .order_by("-created_at")
    )


def calls_ringing_for(*, user) -> QuerySet[Call]:
    """Calls that ring this user right now: they are the callee of a call that rings, or were
    invited into one that goes on, and haven't answered yet."""
    return (
        Call.objects.filter(
            Q(state=CallState.RINGING, participants__role=ParticipantRole.CALLEE)
            | Q(state__in=LIVE_STATES, participants__role=ParticipantRole.INVITEE),
            participants__user=user,
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
    # Only accounts the caller can reach (User.can_reach): another integrator's users, or this
    # site's people for an integrator's user, are "no one called …", as if they didn't exist.
    user = (
        get_user_model()
        .objects.filter(username__iexact=name, is_active=True, integrator_id=caller.integrator_id)
        .first()
    )
    if user is None:
        raise NotCallable(f"There is no one called {name!r} here.")
    if user.pk == caller.pk:
        raise NotCallable("You can't call yourself.")
    return user


def missed_unseen_for(*, user) -> QuerySet[Call]:
    """Missed calls to this user that they have not seen yet (opening the history sees them)."""
    return Call.objects.filter(
        missed=True,
        missed_seen=False,
        participants__user=user,
        participants__role=ParticipantRole.CALLEE,
    )


def missed_count_for(*, user) -> int:
    return missed_unseen_for(user=user).count()


def call_quality_for(*, call) -> list[dict]:
    """Per participant: the paths used and the quality over the call, from its `stats` samples."""
    out = []
    for p in call.participants.all():
        samples = list(QualitySample.objects.filter(participant=p).order_by("at"))
        rtts = sorted(s.rtt_ms for s in samples if s.rtt_ms is not None)
        paths: list[str] = []
        for s in samples:
            label = s.path + (f" via {s.relay_url}" if s.relay_url else "")
            if not paths or paths[-1] != label:
                paths.append(label)
        grades = [s.grade for s in samples]
        out.append(
            {
                "participant": p,
                "samples": samples,
                "count": len(samples),
                "paths": paths,
                "median_rtt": rtts[len(rtts) // 2] if rtts else None,
                "max_loss": max((s.loss_pct or 0 for s in samples), default=None),
                "grades": {g: grades.count(g) for g in ("good", "fair", "poor") if g in grades},
            }
        )
    return out


def path_stats(*, days: int = 14, now=None, failed_limit: int = 50) -> dict:
    """The fleet's truth for admins, over the last `days` days (by the day a call started):
    calls that went direct, relayed, or failed, per day; the same share per NAT type that the
    participants' network tests found; which relays carried how many calls and minutes; and
    the failed calls, with the path each side tried and the relays it was given. Three queries,
    whatever the number of calls."""
    now = now or timezone.now()
    first_day = timezone.localdate(now) - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first_day, time.min))
    until = timezone.make_aware(datetime.combine(first_day + timedelta(days=days), time.min))
    calls = {
        c["id"]: c
        for c in Call.objects.filter(created_at__gte=since, created_at__lt=until).values(
            "id", "created_at", "answered_at", "ended_at", "end_reason", "state"
        )
    }
    sides: dict = {call_id: [] for call_id in calls}
    for p in (
        Participant.objects.filter(call_id__in=list(calls))
        .values(
            "call_id",
            "connection_type",
            "relay_id",
            "relay__name",
            "network_type",
            "user__username",
            "joined_at",
        )
        .order_by("call_id", "pk")
    ):
        sides[p["call_id"]].append(p)
    per_day = {
        first_day + timedelta(days=i): {"direct": 0, "relayed": 0, "failed": 0} for i in range(days)
    }
    per_type: dict[str, dict[str, int]] = {}
    relays: dict[str, dict] = {}
    failed: list[dict] = []
    for call_id, call in sorted(calls.items(), key=lambda kv: kv[1]["created_at"]):
        parts = sides[call_id]
        sides_in = [p for p in parts if took_part(p["joined_at"], p["connection_type"])]
        path = call_path({p["connection_type"] for p in sides_in})
        day = per_day[timezone.localdate(call["created_at"])]
        if call["end_reason"] == EndReason.FAILED:
            day["failed"] += 1
            failed.append(
                {
                    "id": str(call_id),
                    "at": call["created_at"],
                    "sides": [
                        {
                            "user": p["user__username"],
                            "path": p["connection_type"] or "never connected",
                            "relay": p["relay__name"] or "",
                            "networkType": p["network_type"] or "untested",
                        }
                        for p in parts
                    ],
                }
            )
        elif path:
            day[path] += 1
        if not path:
            continue
        for p in sides_in:
            seen = per_type.setdefault(p["network_type"] or "untested", {"direct": 0, "relayed": 0})
            seen[path] += 1
        if call["answered_at"]:
            seconds = ((call["ended_at"] or now) - call["answered_at"]).total_seconds()
            for name in {p["relay__name"] for p in parts if p["relay_id"]}:
                carried = relays.setdefault(name, {"calls": 0, "minutes": 0.0})
                carried["calls"] += 1
                carried["minutes"] += max(0.0, seconds) / 60
    failed = list(reversed(failed))[:failed_limit]
    given: dict[tuple[str, str], list[str]] = {}
    for row in AssignedRelay.objects.filter(
        participant__call_id__in=[f["id"] for f in failed]
    ).values_list("participant__call_id", "participant__user__username", "relay__name"):
        given.setdefault((str(row[0]), row[1]), []).append(row[2])
    for f in failed:
        for side in f["sides"]:
            side["relaysGiven"] = given.get((f["id"], side["user"]), [])
    return {
        "days": [{"day": d, **counts} for d, counts in sorted(per_day.items())],
        "networkTypes": [{"networkType": t, **c} for t, c in sorted(per_type.items())],
        "relays": sorted(
            (
                {"relay": n, "calls": c["calls"], "minutes": round(c["minutes"], 1)}
                for n, c in relays.items()
            ),
            key=lambda r: (-r["calls"], r["relay"]),
        ),
        "failed": failed,
    }
