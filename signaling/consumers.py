"""The signaling WebSocket: one socket per device, at /ws/signal/.

The consumer parses, authenticates and authorizes every frame, then calls a service. SDP and
candidates go point-to-point to the peer's device channel (channel_layer.send); group_send is
only used for fan-out to all devices of a user (an incoming call, a call that ended).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from calls.models import CallState, EndReason, Participant, ParticipantState
from calls.selectors import participant_for
from calls.services import (
    CallError,
    call_disconnected,
    call_end,
    call_join,
    call_leave,
    participant_report,
)
from relays.services import ice_servers_issue

from .broadcast import run_and_announce
from .groups import user_group
from .presence import presence_for
from .protocol import ClientMessage, ProtocolError, envelope, parse_frame

logger = logging.getLogger(__name__)

RATE_PER_SECOND = 40.0
RATE_BURST = 120.0


class _TokenBucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@database_sync_to_async
def _call_members(call_id: str) -> list[Participant]:
    return list(Participant.objects.select_related("call", "user").filter(call_id=call_id))


class SignalConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope, receive, send) -> None:
        # disconnect() only runs when the server tells the consumer the socket closed. A consumer
        # that dies (its channel layer read failed, the task was cancelled) never hears that, so
        # the same clean-up runs here too: a drop is a drop, however the socket went.
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # The server is shutting down (or the task was killed): its event loop is going away,
            # and a database call here would wait forever for a broadcast that needs that loop.
            # This process stops beating, so presence turns its devices into `reconnecting`
            # within PRESENCE_TTL_SECONDS, as for a crash.
            await self._release(record=False)
            raise
        except BaseException:
            await self._release()
            raise
        else:
            await self._release()

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.user = user
        self.seq = 0
        self.joined: set[str] = set()
        self.ended: set[str] = set()
        self.bucket = _TokenBucket(RATE_PER_SECOND, RATE_BURST)
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        self.released = False
        await self.channel_layer.group_add(user_group(user.pk), self.channel_name)
        await self.accept()
        await presence_for(self.channel_name).add_socket(self.channel_name, user.pk)
        body: dict = {"user": {"id": user.pk, "username": user.username, "name": user.label()}}
        # Pages that only listen (home: incoming calls) connect with ?ice=0 and get no credentials.
        if parse_qs(self.scope.get("query_string", b"").decode()).get("ice") != ["0"]:
            body["ice"] = await database_sync_to_async(ice_servers_issue)(user=user)
        await self.emit("welcome", body=body)

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def _release(self, *, record: bool = True) -> None:
        """The socket is gone: each call it was in starts its grace window (the participant is
        `reconnecting`, not left). Runs once, whichever way the socket went."""
        if not hasattr(self, "user") or self.released:
            return
        self.released = True
        joined, self.joined = (list(self.joined) if record else []), set()
        for call_id in joined:
            try:
                await run_and_announce(
                    call_disconnected,
                    call_id=call_id,
                    user=self.user,
                    channel_name=self.channel_name,
                )
            except Exception:  # the reaper finds this device through presence instead
                logger.exception("signaling: could not record the drop of call %s", call_id)
        try:
            await presence_for(self.channel_name).remove_socket(self.channel_name)
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)
        except Exception as exc:
            logger.warning("signaling: clean-up of %s incomplete: %s", self.channel_name, exc)

    # --- sending ------------------------------------------------------------------------
    async def emit(
        self,
        mtype: str,
        *,
        call: str | None = None,
        body: dict | None = None,
        ref: str | None = None,
    ) -> None:
        self.seq += 1
        await self.send_json(envelope(mtype, seq=self.seq, call=call, body=body, ref=ref))

    async def send_json(self, data: dict) -> None:
        await self.send(text_data=json.dumps(data, separators=(",", ":")))

    async def emit_error(
        self, code: str, message: str, *, ref: str | None = None, call: str | None = None
    ) -> None:
        await self.emit("error", call=call, body={"code": code, "message": message}, ref=ref)

    # --- receiving ----------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.bucket.take():
            await self.emit_error("rate_limited", "Too many messages; slow down.")
            return
        msg: ClientMessage | None = None
        try:
            msg = parse_frame(text_data, max_bytes=settings.SIGNALING_MAX_FRAME_BYTES)
            await getattr(self, "on_" + msg.type)(msg)
        except ProtocolError as exc:
            await self.emit_error(
                exc.code,
                exc.message,
                ref=exc.ref or (msg.id if msg else None),
                call=msg.call if msg else None,
            )
        except CallError as exc:
            await self.emit_error(
                exc.code, exc.message, ref=msg.id if msg else None, call=msg.call if msg else None
            )
        except Exception:
            logger.exception("signaling: failed to handle a %s frame", msg.type if msg else "?")
            await self.emit_error(
                "internal", "The server could not handle that message.", ref=msg.id if msg else None
            )

    async def _require_joined(self, msg: ClientMessage) -> tuple[Participant, list[Participant]]:
        """Membership and state check for in-call messages: returns (me, peers present)."""
        members = await _call_members(msg.call)
        me = next((p for p in members if p.user_id == self.user.pk), None)
        if me is None:
            raise ProtocolError("forbidden", "You are not a participant of this call.", msg.id)
        if me.call.state == CallState.ENDED:
            raise ProtocolError("call_ended", "This call has ended.", msg.id)
        if (
            msg.call not in self.joined
            or me.channel_name != self.channel_name
            or me.state != ParticipantState.JOINED
        ):
            raise ProtocolError("not_joined", "Join the call on this connection first.", msg.id)
        return me, [p for p in members if p.pk != me.pk and p.present]

    async def on_ping(self, msg: ClientMessage) -> None:
        await self.emit("pong", ref=msg.id)

    async def on_join(self, msg: ClientMessage) -> None:
        me = await database_sync_to_async(participant_for)(call_id=msg.call, user=self.user)
        if me is None:
            # Same answer whether the call doesn't exist or isn't theirs: ids are not probeable.
            raise ProtocolError("forbidden", "You are not a participant of this call.", msg.id)
        call, peers, resumed = await run_and_announce(
            call_join, participant=me, channel_name=self.channel_name, resume=msg.body["resume"]
        )
        self.joined.add(msg.call)
        await self.emit(
            "joined",
            call=msg.call,
            ref=msg.id,
            body={
                "state": call.state,
                "resumed": resumed,
                "role": me.role,
                "polite": me.role == "callee",
                "peers": [
                    {"user": p.user_id, "username": p.user.username, "name": p.user.label()}
                    for p in peers
                ],
            },
        )

    async def on_leave(self, msg: ClientMessage) -> None:
        if msg.call not in self.joined:
            raise ProtocolError(
                "not_joined", "You have not joined this call on this connection.", msg.id
            )
        await run_and_announce(
            call_leave, call_id=msg.call, user=self.user, channel_name=self.channel_name
        )
        self.joined.discard(msg.call)
        await self.emit("left", call=msg.call, ref=msg.id)

    async def _relay(self, msg: ClientMessage) -> None:
        _, peers = await self._require_joined(msg)
        if not peers:
            raise ProtocolError("peer_not_present", "Nobody else is in the call yet.", msg.id)
        for peer in peers:
            await self.channel_layer.send(
                peer.channel_name,
                {
                    "type": "signal.relay",
                    "kind": msg.type,
                    "call": msg.call,
                    "from": self.user.pk,
                    "body": msg.body,
                },
            )

    on_offer = on_answer = on_candidate = _relay

    async def on_hangup(self, msg: ClientMessage) -> None:
        me = await database_sync_to_async(participant_for)(call_id=msg.call, user=self.user)
        if me is None:
            raise ProtocolError("forbidden", "You are not a participant of this call.", msg.id)
        await run_and_announce(call_end, call_id=msg.call, user=self.user, reason=EndReason.HANGUP)

    async def on_report(self, msg: ClientMessage) -> None:
        me, _ = await self._require_joined(msg)
        await database_sync_to_async(participant_report)(
            participant=me,
            connection_type=msg.body["connectionType"],
            relay_url=msg.body["relayUrl"],
            rtt_ms=msg.body["rttMs"],
        )
        await self.emit("reported", call=msg.call, ref=msg.id)

    # --- channel-layer events -----------------------------------------------------------
    async def signal_relay(self, event: dict) -> None:
        if event["call"] in self.joined:
            await self.emit(
                event["kind"], call=event["call"], body={**event["body"], "from": event["from"]}
            )

    async def call_incoming(self, event: dict) -> None:
        await self.emit("incoming", call=event["call"], body={"from": event["from"]})

    async def call_answered(self, event: dict) -> None:
        await self.emit("answered", call=event["call"])

    async def call_peer_joined(self, event: dict) -> None:
        if event["call"] in self.joined:
            await self.emit(
                "peer-joined",
                call=event["call"],
                body={"user": event["user"], "resumed": event.get("resumed", False)},
            )

    async def call_peer_reconnecting(self, event: dict) -> None:
        if event["call"] in self.joined:
            await self.emit(
                "peer-reconnecting",
                call=event["call"],
                body={"user": event["user"], "graceSeconds": settings.SIGNALING_GRACE_SECONDS},
            )

    async def call_peer_left(self, event: dict) -> None:
        if event["call"] in self.joined:
            await self.emit("peer-left", call=event["call"], body={"user": event["user"]})

    async def call_ended(self, event: dict) -> None:
        if event["call"] in self.ended:
            return  # sent both to the device channel and the user group
        self.ended.add(event["call"])
        self.joined.discard(event["call"])
        await self.emit(
            "hangup", call=event["call"], body={"by": event["by"], "reason": event["reason"]}
        )

    # --- accounts ---------------------------------------------------------------------
    async def user_signed_out(self, event: dict) -> None:
        """That session signed out: its sockets close (other sessions of the user stay)."""
        if event.get("session") is None or event["session"] == self.session_key:
            await self.emit("error", body={"code": "signed_out", "message": "You signed out."})
            await self.close(code=4401)

    async def user_deactivated(self, event: dict) -> None:
        await self.emit(
            "error", body={"code": "account_disabled", "message": "This account is disabled."}
        )
        await self.close(code=4403)
