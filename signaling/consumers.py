"""The signaling WebSocket: one socket per device, at /ws/signal/.

The consumer parses, authenticates and authorizes every frame, then calls a service. Offers,
answers and candidates are the hot path: the consumer knows the devices of each call it joined
(from its join, then from the peer-joined / peer-left / hangup frames of its own session), so it
checks and relays them without the database, straight to the peer's device session (hub.py).
group_send is only used for fan-out to all devices of a user (an incoming call, sign-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from calls.models import CallState, Participant, ParticipantRole, ParticipantState
from calls.selectors import (
    NotCallable,
    callee_for,
    calls_ringing_for,
    early_peers_for,
    participant_for,
)
from calls.services import (
    CallError,
    Joined,
    NotInCall,
    call_accept,
    call_cancel,
    call_decline,
    call_disconnected,
    call_hangup,
    call_ice_issue,
    call_invite,
    call_join,
    call_leave,
    call_resume_session,
    call_take_over,
    chat_post,
    participant_media,
    participant_report,
    participant_stats,
)
from config.client_ip import scope_client_ip
from config.middleware import OUTAGES, RETRY_AFTER_SECONDS, outage_message, unreachable
from relays.scoring import network_key
from relays.services import (
    IceLimited,
    MeasureLimited,
    ReportLimited,
    ice_issue_check,
    ice_servers_issue,
    relay_failure_report,
    relay_gather_report,
)
from relays.tasks import reprobe_relay

from .broadcast import BROADCAST_ERRORS, in_db_pool, run_and_announce
from .early import early_add, early_devices, early_remove
from .groups import user_group
from .hub import PeerUnreachable, deliver, hub_for, process_drain
from .layer_reader import reader_for
from .presence import node_of, presence_for, redis_for_loop
from .protocol import ClientMessage, ProtocolError, parse_frame
from .sessions import (
    LIVE_TTL_SECONDS,
    compact_json,
    frame_id,
    frame_text,
    new_session_id,
    parse_forwarded,
    session_adopt,
    session_detach,
    session_forget,
    session_keep,
    session_open,
    with_seq,
)

logger = logging.getLogger(__name__)

# Frames that may wait for a peer device whose socket is away before the sender is told
# `peer_queue_full` (half the replay buffer: the device can still resume).
PEER_QUEUE_FRAMES = 128
# "This process is restarting": the page reconnects at once, to another process. (1012, the
# standard code for it, is one that Daphne's autobahn won't send: applications get 1000 and
# 3000-4999 only.)
RESTART_CLOSE_CODE = 4012
# "Signaling is unavailable for now (Redis is unreachable)": the page tries again, backing off.
UNAVAILABLE_CLOSE_CODE = 4503
# "Your session was resumed on another socket": this one is stale (the page has moved on).
SESSION_MOVED_CLOSE_CODE = 4409
# Frames of its own session that change what a consumer knows of a call's devices.
MEMBERSHIP_FRAMES = frozenset(
    {"peer-joined", "peer-left", "hangup", "taken-over", "early-peer", "early-left"}
)
# The frames relayed device to device (`_relay`), and where `_direct` leaves a frame it parsed.
RELAYED = frozenset({"offer", "answer", "candidate"})
PARSED = "traverse.parsed"
# A live session's lifetime in Redis is pushed back this often, by the frame that comes then.
_TTL_REFRESH_SECONDS = 3600
_store_warned = [0.0]  # when a failed store was last logged: once a minute, not once a frame


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


def _ice_for(*, user, region: str, ip, keep: str, call: str) -> dict:
    """The welcome's relays: for the call page's call (?call=), chosen with its other side in
    mind and recorded on the participant; for a call the user isn't in, as for no call (the
    page learns nothing of it: its own join is refused the usual way)."""
    if call:
        try:
            return call_ice_issue(user=user, call_id=call, region=region, ip=ip, keep=keep)
        except NotInCall:
            pass
    return ice_servers_issue(user=user, region=region, ip=ip, keep=keep)


def _device(user_id: int, session: str, card: dict) -> dict:
    """One device of a user, as the early-ICE frames name it."""
    return {"user": user_id, "session": session, "username": card["username"], "name": card["name"]}


def _ringing_for(user) -> list[dict]:
    return [
        {
            "call": str(c.pk),
            "kind": c.kind,
            "from": c.created_by.card(),
        }
        for c in calls_ringing_for(user=user)[:10]
    ]


class SignalConsumer(AsyncWebsocketConsumer):
    task: asyncio.Task | None = None  # the one this consumer runs in
    failure: BaseException | None = None  # see layer_failed
    closing: asyncio.Future | None = None  # a close under way (see _unkept)
    # Under Daphne (under_daphne.SlimQueue): the socket's input queue, and a send that doesn't
    # await (see _direct). None under other servers and in tests' communicators.
    queue: Any = None
    send_now: Callable[[dict], None] | None = None

    async def __call__(self, scope, receive, send) -> None:
        # disconnect() only runs when the server tells the consumer the socket closed. A consumer
        # that dies (its channel layer read failed, the task was cancelled) never hears that, so
        # the same clean-up runs here too: a drop is a drop, however the socket went.
        self.task = asyncio.current_task()
        try:
            await self._serve(scope, receive, send)
        except asyncio.CancelledError:
            if isinstance(self.failure, OUTAGES):  # layer_failed: Redis went (logged there)
                # "Come back later", not a failed application (1011 and a traceback): the page
                # reconnects with its back-off and resumes its session once Redis is back.
                await self._close_quietly(UNAVAILABLE_CLOSE_CODE)
                await self._release()
                return
            if self.failure is not None:  # layer_failed: a failure, not a shutdown
                await self._release()
                raise self.failure from None
            # The server is shutting down (Daphne cancels every consumer before it exits): tell
            # the page to reconnect now (4012, "service restart"), and it resumes its session on
            # another process (rolling restarts), rather than wait for a drop to be noticed.
            # No database here: the event loop is going away, and a database call would wait
            # forever for a broadcast that needs it. Resuming elsewhere moves the participants;
            # those that don't come back are found through presence (this process stops
            # beating), as after a crash.
            process_drain()
            await self._close_quietly(RESTART_CLOSE_CODE)
            await self._release(record=False)
            raise
        except BaseException:
            await self._release()
            raise
        else:
            await self._release()

    async def _serve(self, scope, receive, send) -> None:
        """AsyncConsumer.__call__ without await_many_dispatch, which makes a task and an
        asyncio.wait for every frame (measured with py-spy under the closed-loop benchmark).
        Frames from the socket are handled one at a time, in order, in this task; channel-layer
        events (ringing, sign-out) come from the process's one reader of the layer
        (layer_reader.py), which ends the consumer if the layer fails (layer_failed)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        queue = getattr(receive, "__self__", None)
        if callable(getattr(queue, "send_now", None)):
            self.queue, self.send_now = queue, queue.send_now
        reader = reader_for(self.channel_layer)
        reader.listen(self.channel_name, self)
        try:
            await self._socket_frames(receive)
        finally:
            await reader.stop(self.channel_name, self)

    async def _socket_frames(self, receive) -> None:
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def layer_event(self, message: dict) -> None:
        """A channel-layer message for this consumer (from layer_reader)."""
        await self.dispatch(message)

    def layer_failed(self, exc: BaseException) -> None:
        """The channel layer failed (Redis went), or a handler of one of its events raised: the
        consumer ends with that error, as when it read the layer in a task of its own."""
        self.failure = exc
        if self.task is not None:
            self.task.cancel()

    async def _close_quietly(self, code: int) -> None:
        with contextlib.suppress(Exception):  # the socket is going already
            await self.close(code=code)

    async def dispatch(self, message: dict) -> None:
        """As AsyncConsumer.dispatch, without its `aclose_old_connections()` per message: that
        hops to the database thread for every frame (a third of the CPU of a relayed frame,
        measured in issue 8), and every database call here goes through in_db_pool, which
        closes old connections itself, before and after."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def accept(self, subprotocol=None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def websocket_connect(self, message: dict) -> None:
        try:
            if self.scope.get("outage") is not None:  # who this is could not be read (auth.py)
                raise self.scope["outage"]
            await super().websocket_connect(message)
        except OUTAGES as exc:
            # Redis or the database went while the socket opened: accepted and told to come
            # back later (4503), as a session that can't start is, not a failed handshake (a
            # 500, or nothing until Daphne's handshake timeout) with a traceback.
            logger.warning(
                "signaling: %s told to come back later: %s unreachable (%s)",
                self.channel_name,
                unreachable(exc),
                exc,
            )
            if not getattr(self, "accepted", False):
                await self.accept()
            await self.close(code=UNAVAILABLE_CLOSE_CODE)

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accepted, then closed with our code: a refused handshake reaches the browser as
            # 1006, which a page can't tell from a network drop, so it would retry forever.
            await self.accept()
            refused = self.scope.get("auth_error")
            if refused:  # a ticket or device token that didn't admit: say why
                await self.send(text_data=compact_json({"v": 1, "type": "error", "body": refused}))
            await self.close(code=4401)
            return
        self.user = user  # a User, not a lazy proxy (auth.py): the hot path reads user.pk
        # call id -> {peer user id: the device session that holds them}, for each call this
        # socket joined: what the hot path checks `to` against.
        self.joined: dict[str, dict[int, str]] = {}
        # call id -> {device session: user id}: the devices this socket may negotiate with
        # before an answer (early ICE): a ringing device's members, a member's ringing devices.
        self.early: dict[str, dict[str, int]] = {}
        self.ended: set[str] = set()
        self.bucket = _TokenBucket(
            settings.SIGNALING_RATE_PER_SECOND, settings.SIGNALING_RATE_BURST
        )
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        self.released = False
        self.resumed = False
        self.held: list[dict] | None = None  # see _holding_frames
        self.network = ""  # whose relay measurements this device shares (set below)
        self.redis = redis_for_loop()
        self.session: str | None = None  # once it is opened (below)
        self.seq = 0  # the last frame numbered on this session: this consumer owns it
        self.refreshed = time.monotonic()
        self.hub = hub_for(node_of(self.channel_name))
        await self.channel_layer.group_add(user_group(user.pk), self.channel_name)
        await self.accept()
        session = new_session_id()
        try:
            await session_open(
                self.redis, session=session, user_id=user.pk, channel=self.channel_name
            )
            self.session = session
            self.hub.hold(session, self)
        except BROADCAST_ERRORS as exc:
            # Without a session, peers can't reach this device: the page tries again later
            # (Redis is restarting, most likely).
            logger.warning("signaling: no device session for %s: %s", self.channel_name, exc)
            await self.close(code=UNAVAILABLE_CLOSE_CODE)
            return
        await presence_for(self.channel_name).add_socket(self.channel_name, user.pk)
        body: dict = {
            "session": self.session,
            "user": user.card(),
            "ringing": await in_db_pool(_ringing_for)(user),
        }
        # Pages that only listen (for incoming calls) connect with ?ice=0 and get no credentials.
        query = parse_qs(self.scope.get("query_string", b"").decode())
        region, ip = (query.get("region") or [""])[0][:64], scope_client_ip(self.scope)
        # Whose relay measurements this device shares (its reports feed them).
        self.network = network_key(ip=ip, region=region)
        if query.get("ice") != ["0"]:
            try:
                await in_db_pool(ice_issue_check)(user=user)
                body["ice"] = await in_db_pool(_ice_for)(
                    user=user,
                    region=region,
                    ip=ip,
                    keep=(query.get("keep") or [""])[0][:32],
                    call=(query.get("call") or [""])[0][:64],
                )
            except IceLimited as exc:
                # The page keeps what it has, and asks again after retryAfter.
                body["iceError"] = {
                    "code": exc.code,
                    "message": str(exc),
                    "retryAfter": exc.retry_after,
                }
        admitted = self.scope.get("admitted")
        if admitted:  # an integrator's end user: reconnect and resume with this, not a ticket
            body["deviceToken"] = admitted["deviceToken"]
            if admitted["call"]:
                body["ticketCall"] = admitted["call"]
        await self.emit("welcome", body=body)
        if self.queue is not None:
            self.queue.direct = self._direct

    async def drain(self) -> None:
        """This process is stopping (hub.process_drain_sockets): the page reconnects elsewhere
        now and resumes its session there. No database (see __call__)."""
        await self._close_quietly(RESTART_CLOSE_CODE)
        await self._release(record=False)

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def _release(self, *, record: bool = True) -> None:
        """The socket is gone: each call it was in starts its grace window (the participant is
        `reconnecting`, not left), and its session is kept for that window. Runs once, whichever
        way the socket went."""
        if not hasattr(self, "user") or self.released:
            return
        self.released = True
        if self.queue is not None:
            self.queue.direct = None
        joined, self.joined = (list(self.joined) if record else []), {}
        early, self.early = self.early, {}
        if record and self.session:
            await self._early_gone(early)
        if self.session:
            self.hub.release(self.session, self)
            # At once: from here frames for the session are numbered in Redis, after what this
            # consumer kept (one pipeline, in order), and a frame that still reaches this
            # process goes there (hub._dispatch).
            try:
                await session_detach(self.redis, session=self.session, channel=self.channel_name)
            except Exception as exc:
                logger.warning("signaling: session %s not detached: %s", self.session, exc)
        for call_id in joined:
            try:
                await run_and_announce(
                    call_disconnected,
                    call_id=call_id,
                    user=self.user,
                    channel_name=self.channel_name,
                )
            except OUTAGES as exc:  # the reaper finds this device through presence instead
                logger.warning(
                    "signaling: the drop of call %s not recorded: %s unreachable (%s)",
                    call_id,
                    unreachable(exc),
                    exc,
                )
            except Exception:
                logger.exception("signaling: could not record the drop of call %s", call_id)
        try:
            await presence_for(self.channel_name).remove_socket(self.channel_name)
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)
        except Exception as exc:
            logger.warning("signaling: clean-up of %s incomplete: %s", self.channel_name, exc)

    async def _early_gone(self, early: dict[str, dict[str, int]]) -> None:
        """This ringing device's socket went: the devices it negotiated with close their side
        (a member's own early entries are the ringing devices', which stay)."""
        for call_id, peers in early.items():
            if call_id in self.joined or call_id in self.ended:
                continue
            try:
                await early_remove(self.redis, call=call_id, session=self.session)
                for session in peers:
                    await self._push(session, "early-left", call_id, {"session": self.session})
            except Exception as exc:
                logger.info("signaling: early devices of call %s not told: %s", call_id, exc)

    async def _push(self, session: str, frame: str, call: str, body: dict) -> None:
        """A server frame into another device session; one that is gone is skipped."""
        text = frame_text(frame, call=call, body=body)
        with contextlib.suppress(PeerUnreachable):
            await deliver(
                self.redis, session=session, frame=frame, call=call, text=text, hub=self.hub
            )

    # --- sending ------------------------------------------------------------------------
    async def emit(
        self,
        mtype: str,
        *,
        call: str | None = None,
        body: dict | None = None,
        ref: str | None = None,
    ) -> None:
        """Send a frame on this device session."""
        await self._out(frame_text(mtype, call=call, body=body, ref=ref), mtype, call)

    async def _out(self, text: str, frame: str, call: str | None) -> None:
        """Number a frame on this device session (this consumer owns it), send it, and keep it
        for a resume: kept behind the send, in the next pipeline (sessions.py)."""
        session = self.session
        if not session:  # no session (Redis was down when the socket opened): unnumbered
            await self.send(text_data=text)
            return
        if self.send_now is not None:  # Daphne: no await (under_daphne.SlimQueue.send_now)
            self._out_now(text, frame, call)
            return
        self.seq += 1
        seq = self.seq
        await self.send(text_data=with_seq(seq, text))
        self._keep(session, seq, text, frame, call)

    def _out_now(self, text: str, frame: str, call: str | None) -> None:
        """_out with no await, under Daphne (the caller checked `send_now` and the session)."""
        self.seq += 1
        seq, session = self.seq, self.session
        self.send_now({"type": "websocket.send", "text": with_seq(seq, text)})  # type: ignore[misc]
        self._keep(session, seq, text, frame, call)  # type: ignore[arg-type]

    def _keep(self, session: str, seq: int, text: str, frame: str, call: str | None) -> None:
        """Keep a sent frame for a resume: behind the send, in the next pipeline (sessions.py)."""
        ttl = 0
        if time.monotonic() - self.refreshed > _TTL_REFRESH_SECONDS:
            ttl, self.refreshed = LIVE_TTL_SECONDS, time.monotonic()
        session_keep(
            self.redis,
            session=session,
            channel=self.channel_name,
            seq=seq,
            text=text,
            ttl=ttl,
            unkept=lambda outcome: self._unkept(outcome, session, frame, call, text),
        )

    def _unkept(self, outcome: int | BaseException, session: str, frame: str, call, text) -> None:
        """A frame this consumer sent was not kept for resume (sessions.session_keep)."""
        if isinstance(
            outcome, BaseException
        ):  # Redis unreachable: sent, but a resume won't have it
            now = time.monotonic()
            if now - _store_warned[0] > 60:
                _store_warned[0] = now
                logger.warning("signaling: frames sent but not kept for resume: %s", outcome)
            return
        if outcome == 0:
            # The session was resumed on another socket before this frame was kept (and the
            # page there had not seen it): this consumer no longer owns it; send it on.
            self.session_moved()
            asyncio.ensure_future(self._send_on(session, frame, call, text))
        elif outcome == -2 and self.session == session:
            # Redis lost the session (it restarted empty): peers can't reach this socket any
            # more. The page reconnects and joins again, keeping its peer connections.
            logger.warning("signaling: session %s was lost by Redis; closing its socket", session)
            self.hub.release(session, self)
            self.session = None
            self.closing = asyncio.ensure_future(self._close_quietly(UNAVAILABLE_CLOSE_CODE))

    async def _send_on(self, session: str, frame: str, call, text: str) -> None:
        try:
            await deliver(self.redis, session=session, frame=frame, call=call, text=text)
        except Exception as exc:  # the session ended meanwhile, or Redis is down
            logger.info("signaling: a frame for moved session %s was dropped: %s", session, exc)

    def session_moved(self) -> None:
        """This socket's session was resumed on another socket: the page has moved on."""
        if self.session is None:
            return
        self.hub.release(self.session, self)
        self.session = None
        asyncio.ensure_future(self.close(code=SESSION_MOVED_CLOSE_CODE))

    async def send_json(self, data: dict) -> None:
        await self.send(text_data=compact_json(data))

    async def emit_error(
        self,
        code: str,
        message: str,
        *,
        ref: str | None = None,
        call: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        body: dict = {"code": code, "message": message}
        if retry_after is not None:  # the same frame may work then (the page sends it again)
            body["retryAfter"] = retry_after
        await self.emit("error", call=call, body=body, ref=ref)

    # --- receiving ----------------------------------------------------------------------
    def _direct(self, item: dict) -> bool:
        """An offer, answer or candidate for a device whose socket this process holds, relayed
        at once, in the server's callback that read it (under_daphne.SlimQueue.direct: only
        while this consumer waits for a frame, so frames are still handled in order). The
        same checks as `receive` and `_relay`, and the same frame out; whatever needs waiting
        for (another process, a full bucket, an error to answer) is left to `receive`, which
        finds the frame parsed. True when it was relayed."""
        text = item.get("text")
        if item["type"] != "websocket.receive" or text is None or not self.session:
            return False
        try:
            msg = parse_frame(text, max_bytes=settings.SIGNALING_MAX_FRAME_BYTES)
        except ProtocolError:
            return False
        item[PARSED] = msg
        if msg.type not in RELAYED:
            return False
        try:
            to, out = self._relayed(msg)
        except ProtocolError:
            return False
        target = self.hub.local.get(to)
        if target is None or not target.takes_now() or not self.bucket.take():
            return False
        try:
            target.session_frame_now(
                {"session": to, "text": out, "frame": msg.type, "call": msg.call}
            )
            self.hub.relayed_at_once += 1
        except Exception:  # as `receive` would log it; the frame is spent either way
            logger.exception("signaling: failed to relay a %s frame", msg.type)
        return True

    async def websocket_receive(self, message: dict) -> None:
        await self.receive(message.get("text"), message.get("bytes"), parsed=message.get(PARSED))

    async def receive(
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        parsed: ClientMessage | None = None,
    ) -> None:
        if not self.bucket.take():
            await self.emit_error("rate_limited", "Too many messages; slow down.")
            return
        msg: ClientMessage | None = None
        try:
            msg = parsed or parse_frame(text_data, max_bytes=settings.SIGNALING_MAX_FRAME_BYTES)
            await getattr(self, "on_" + msg.type.replace("-", "_"))(msg)
        except (ProtocolError, CallError) as exc:
            ref = getattr(exc, "ref", None) or (msg.id if msg else None)
            await self.emit_error(exc.code, exc.message, ref=ref, call=msg.call if msg else None)
        except OUTAGES as exc:
            # The socket stays, and the page may send it again: a line in the log, not a
            # traceback per frame while Redis or the database is away.
            what = unreachable(exc)
            logger.warning(
                "signaling: a %s frame refused: %s unreachable (%s)",
                msg.type if msg else "?",
                what,
                exc,
            )
            await self.emit_error(
                "unavailable",
                outage_message(what),
                ref=msg.id if msg else None,
                call=msg.call if msg else None,
                retry_after=RETRY_AFTER_SECONDS,
            )
        except Exception:
            logger.exception("signaling: failed to handle a %s frame", msg.type if msg else "?")
            await self.emit_error(
                "internal", "The server could not handle that message.", ref=msg.id if msg else None
            )

    async def _member(self, msg: ClientMessage) -> Participant:
        me = await in_db_pool(participant_for)(call_id=msg.call, user=self.user)
        if me is None:
            # Same answer whether the call doesn't exist or isn't theirs: ids are not probeable.
            raise ProtocolError("forbidden", "You are not a participant of this call.", msg.id)
        return me

    def _peers(self, msg: ClientMessage) -> dict[int, str]:
        """The devices of a call this socket joined (no database: see the module header)."""
        if msg.call in self.ended:
            raise ProtocolError("call_ended", "This call has ended.", msg.id)
        peers = self.joined.get(msg.call)  # type: ignore[arg-type]
        if peers is None:
            raise ProtocolError("not_joined", "Join the call on this connection first.", msg.id)
        return peers

    async def _joined_participant(self, msg: ClientMessage) -> Participant:
        """For in-call messages that are stored (media state, stats, report): the participant,
        which this device session must hold, joined, in a call that goes on."""
        self._peers(msg)
        me = await self._member(msg)
        if me.call.state == CallState.ENDED:
            raise ProtocolError("call_ended", "This call has ended.", msg.id)
        if (
            me.session != self.session
            or me.channel_name != self.channel_name
            or me.state != ParticipantState.JOINED
        ):
            raise ProtocolError("not_joined", "Join the call on this connection first.", msg.id)
        return me

    @contextlib.asynccontextmanager
    async def _holding_frames(self):
        """While a join or a resume is under way, frames that peers push into this session
        wait, then go through session_frame once it is done. Sent during a resume they came
        before `resumed`, and the page took the session's old frames (a `joined`, a
        `peer-joined`) as new ones; learned during a join they were overwritten by what the
        join read (every one of them was committed after that read: the join holds the call's
        lock)."""
        self.held = []
        try:
            yield
        finally:
            held, self.held = self.held, None
            for event in held:
                await self.session_frame(event)

    def _hold_call(self, call_id: str, peers: list[Participant]) -> None:
        self.joined[call_id] = {p.user_id: p.session for p in peers if p.session}

    async def _emit_joined(self, msg: ClientMessage, me: Participant, joined: Joined) -> None:
        call, peers = joined.call, joined.peers
        self._hold_call(msg.call, peers)  # type: ignore[arg-type]
        self.early.pop(msg.call, None)  # type: ignore[arg-type]
        early = []
        if call.state == CallState.RINGING:
            early = await self._early_meet(msg.call)  # type: ignore[arg-type]
        elif me.role != ParticipantRole.CALLER:
            # Answered here: nobody negotiates early any more.
            with contextlib.suppress(*BROADCAST_ERRORS):
                await early_remove(self.redis, call=msg.call)  # type: ignore[arg-type]
        await self.emit(
            "joined",
            call=msg.call,
            ref=msg.id,
            body={
                "state": call.state,
                "resumed": joined.resumed,
                # Frames about these peers with a smaller step are older than this list.
                "step": joined.step,
                "role": me.role,
                "polite": me.role == ParticipantRole.CALLEE,
                "kind": call.kind,
                "peers": [
                    {
                        "user": p.user_id,
                        "session": p.session,
                        "username": p.user.username,
                        "name": p.user.label(),
                        "media": p.media(),
                    }
                    for p in peers
                    if p.present
                ],
                "early": early,
            },
        )

    async def on_ping(self, msg: ClientMessage) -> None:
        await self.emit("pong", ref=msg.id)

    async def on_resume(self, msg: ClientMessage) -> None:
        if self.joined or self.resumed or not self.session:
            raise ProtocolError(
                "resume_failed", "Resume first, once, before joining a call.", msg.id
            )
        async with self._holding_frames():
            await self._resume(msg, msg.body["session"])

    async def _resume(self, msg: ClientMessage, old: str) -> None:
        seq, _, frames, inbox = await session_adopt(
            self.redis,
            session=old,
            user_id=self.user.pk,
            channel=self.channel_name,
            last_seq=msg.body["lastSeq"],
        )
        if seq < 0:
            raise ProtocolError(
                "resume_failed", "That session can't be resumed; carry on with this one.", msg.id
            )
        with contextlib.suppress(*BROADCAST_ERRORS):
            await session_forget(self.redis, session=self.session)
        self.hub.release(self.session, self)
        self.session, self.resumed, self.seq = old, True, seq
        self.hub.hold(old, self)
        resumed = await run_and_announce(
            call_resume_session,
            user=self.user,
            session=old,
            channel_name=self.channel_name,
        )
        for call_id, peers in resumed:
            self._hold_call(call_id, peers)
            # Still ringing: the devices negotiating early hear of this socket again.
            await self._early_meet(call_id)
        calls = [call_id for call_id, _ in resumed]
        # Unnumbered, and before the replay: the page knows that what follows is numbered in the
        # resumed session (frames before it were numbered in the socket's fresh one).
        await self.send_json(
            {
                "v": 1,
                "type": "resumed",
                "id": frame_id(),
                "ref": msg.id,
                "body": {"session": old, "replayed": len(frames), "calls": calls},
            }
        )
        for _, frame in frames:
            await self.send(text_data=frame)
        # Then what was forwarded while no process listened for the session's old socket
        # (its process died): before what peers pushed during this resume.
        waiting = []
        for data in inbox:
            session, frame, call, text = parse_forwarded(data)
            waiting.append({"session": session, "text": text, "frame": frame, "call": call})
        self.held[:0] = waiting  # type: ignore[index]

    async def on_join(self, msg: ClientMessage) -> None:
        me = await self._member(msg)
        async with self._holding_frames():
            joined = await run_and_announce(
                call_join,
                participant=me,
                channel_name=self.channel_name,
                session=self.session or "",
                resume=msg.body["resume"],
                replaces=msg.body["replaces"],
            )
            await self._emit_joined(msg, me, joined)

    async def on_accept(self, msg: ClientMessage) -> None:
        me = await self._member(msg)
        async with self._holding_frames():
            joined = await run_and_announce(
                call_accept,
                participant=me,
                channel_name=self.channel_name,
                session=self.session or "",
                video=msg.body["video"],
            )
            await self._emit_joined(msg, me, joined)

    async def on_early(self, msg: ClientMessage) -> None:
        """This device rings and negotiates now, with no media (early ICE): the call's devices
        that joined are told (`early-peer`), and so is this one (`early-ready`); those that
        join later are told when they do (_emit_joined)."""
        if not settings.CALL_EARLY_ICE:
            raise ProtocolError(
                "early_ice_off", "This server negotiates calls only once they are answered.", msg.id
            )
        if not self.session:
            raise ProtocolError("not_joined", "This connection has no device session.", msg.id)
        me = await self._member(msg)
        if await in_db_pool(early_peers_for)(participant=me) is None:
            raise ProtocolError("not_ringing", "This call doesn't ring this device.", msg.id)
        card = self.user.card()
        # Registered first, then the devices in the call read: a caller's device joining at
        # this moment commits its join, then reads the registered devices (_early_meet). Each
        # side writes before it reads, so at least one of them sees the other (both may: the
        # pages ignore a device they know).
        added = await early_add(
            self.redis,
            call=msg.call,  # type: ignore[arg-type]
            session=self.session,
            card=card,
            ttl=int(settings.CALL_RING_TIMEOUT) + 30,
        )
        if not added:
            raise ProtocolError(
                "early_full",
                "Too many devices negotiate this call already: this one will after answering.",
                msg.id,
            )
        members = await in_db_pool(early_peers_for)(participant=me) or []
        mine = self.early.setdefault(msg.call, {})  # type: ignore[arg-type]
        me_body = _device(card["id"], self.session, card)
        peers = []
        for p in members:
            mine[p.session] = p.user_id
            await self._push(p.session, "early-peer", msg.call, me_body)  # type: ignore[arg-type]
            peers.append(_device(p.user_id, p.session, p.user.card()))
        await self.emit("early-ready", call=msg.call, ref=msg.id, body={"peers": peers})

    async def _early_meet(self, call_id: str) -> list[dict]:
        """A device joined a ringing call: it and the devices that ring early are told of each
        other. Returns the early devices (for its `joined`)."""
        if not settings.CALL_EARLY_ICE or not self.session:
            return []
        try:
            devices = await early_devices(self.redis, call=call_id)
        except BROADCAST_ERRORS:
            return []
        card = self.user.card()
        me_body = _device(card["id"], self.session, card)
        found = []
        for session, who in devices.items():
            if who["id"] == self.user.pk:
                continue
            self.early.setdefault(call_id, {})[session] = who["id"]
            await self._push(session, "early-peer", call_id, me_body)
            found.append(_device(who["id"], session, who))
        return found

    async def on_take_over(self, msg: ClientMessage) -> None:
        me = await self._member(msg)
        async with self._holding_frames():
            joined = await run_and_announce(
                call_take_over,
                participant=me,
                channel_name=self.channel_name,
                session=self.session or "",
            )
            await self._emit_joined(msg, me, joined)

    async def on_decline(self, msg: ClientMessage) -> None:
        await run_and_announce(call_decline, participant=await self._member(msg))

    async def on_cancel(self, msg: ClientMessage) -> None:
        await run_and_announce(call_cancel, participant=await self._member(msg))

    async def on_leave(self, msg: ClientMessage) -> None:
        if msg.call not in self.joined:
            raise ProtocolError(
                "not_joined", "You have not joined this call on this connection.", msg.id
            )
        await run_and_announce(
            call_leave, call_id=msg.call, user=self.user, channel_name=self.channel_name
        )
        self.joined.pop(msg.call, None)  # type: ignore[arg-type]
        await self.emit("left", call=msg.call, ref=msg.id)

    def _relayed(self, msg: ClientMessage) -> tuple[str, str]:
        """The device session an offer, answer or candidate goes to, and the frame it gets:
        one device of the call (`to`), or the only one; while it rings, between a ringing
        device and the devices that joined (early ICE). Raises ProtocolError when it may not
        go. Changes nothing (`_direct` may give up on a frame after this)."""
        early = self.early.get(msg.call)  # type: ignore[arg-type]
        if early and msg.call not in self.joined and msg.call not in self.ended:
            peers: dict[int, str] = {}
        else:
            peers = self._peers(msg)
        body = dict(msg.body)
        to = body.pop("to", None)
        if to is None:
            if early or len(peers) > 1:
                raise ProtocolError(
                    "to_required", "Several devices are in this call: say which (`to`).", msg.id
                )
            to = next(iter(peers.values()), None)
            if to is None:
                raise ProtocolError("peer_not_present", "Nobody else is in the call yet.", msg.id)
        elif to not in peers.values() and not (early and to in early):
            raise ProtocolError("not_a_peer", "That device is not in this call.", msg.id)
        body["from"] = self.user.pk
        body["fromSession"] = self.session
        return to, frame_text(msg.type, call=msg.call, body=body)

    async def _relay(self, msg: ClientMessage) -> None:
        to, text = self._relayed(msg)
        try:
            await deliver(
                self.redis,
                session=to,
                frame=msg.type,
                call=msg.call,
                text=text,
                limit=PEER_QUEUE_FRAMES,
                hub=self.hub,
            )
        except PeerUnreachable as exc:
            if exc.code == "peer_queue_full":
                raise ProtocolError(
                    exc.code,
                    "The other device is away and too many messages wait for it; try later.",
                    msg.id,
                ) from None
            raise ProtocolError(exc.code, "That device is no longer in the call.", msg.id) from None

    on_offer = on_answer = on_candidate = _relay

    async def on_media_state(self, msg: ClientMessage) -> None:
        me = await self._joined_participant(msg)
        await run_and_announce(participant_media, participant=me, **msg.body)

    async def on_stats(self, msg: ClientMessage) -> None:
        me = await self._joined_participant(msg)
        await run_and_announce(participant_stats, participant=me, **msg.body)

    async def on_invite(self, msg: ClientMessage) -> None:
        me = await self._joined_participant(msg)
        try:
            invitee = await in_db_pool(callee_for)(caller=self.user, username=msg.body["username"])
        except NotCallable as exc:
            raise ProtocolError("bad_callee", str(exc), msg.id) from None
        await run_and_announce(call_invite, participant=me, invitee=invitee)

    async def on_chat(self, msg: ClientMessage) -> None:
        me = await self._joined_participant(msg)
        await run_and_announce(chat_post, participant=me, text=msg.body["text"])

    async def on_hangup(self, msg: ClientMessage) -> None:
        me = await self._member(msg)
        await run_and_announce(call_hangup, participant=me, reason=msg.body["reason"])

    async def on_relay_failure(self, msg: ClientMessage) -> None:
        """This device could not use a relay it was given: it is probed again now."""
        try:
            relay = await in_db_pool(relay_failure_report)(
                user=self.user, relay_url=msg.body["relayUrl"], problem=msg.body["problem"]
            )
        except ReportLimited as exc:
            raise ProtocolError(exc.code, str(exc), msg.id) from None
        if relay is not None:
            await in_db_pool(reprobe_relay.delay)(str(relay.pk))
        await self.emit("relay-failure-noted", ref=msg.id)

    async def on_relay_gather(self, msg: ClientMessage) -> None:
        """How long each relay this device was given took to give it a candidate: feeds each
        relay's figure for the device's network."""
        try:
            taken = await in_db_pool(relay_gather_report)(
                user=self.user, network=self.network, gathered=msg.body["gathered"]
            )
        except MeasureLimited as exc:
            raise ProtocolError(exc.code, str(exc), msg.id) from None
        await self.emit("relay-gather-noted", ref=msg.id, body={"taken": taken})

    async def on_report(self, msg: ClientMessage) -> None:
        me = await self._joined_participant(msg)
        await run_and_announce(
            participant_report,
            participant=me,
            connection_type=msg.body["connectionType"],
            relay_url=msg.body["relayUrl"],
            rtt_ms=msg.body["rttMs"],
            network=self.network,
        )
        await self.emit("reported", call=msg.call, ref=msg.id)

    # --- channel-layer events -----------------------------------------------------------
    def takes_now(self) -> bool:
        """Whether session_frame_now can send here (under Daphne, with a session)."""
        return self.send_now is not None and self.session is not None

    def session_frame_now(self, event: dict) -> None:
        """session_frame with no await, for a consumer that takes_now()."""
        if self._to_send(event):
            self._out_now(event["text"], event["frame"], event.get("call"))

    async def session_frame(self, event: dict) -> None:
        """A frame pushed into this device session by someone else (hub.deliver)."""
        if self._to_send(event):
            await self._out(event["text"], event["frame"], event.get("call"))

    def _to_send(self, event: dict) -> bool:
        """Whether a frame pushed into this device session is this socket's to send now."""
        if self.held is not None:
            self.held.append(event)  # a join or resume is under way: see _holding_frames
            return False
        if event["session"] != self.session:
            return False  # for the fresh session this socket gave up for a resumed one
        call = event.get("call")
        if event["frame"] in MEMBERSHIP_FRAMES and call:
            self._learn(event["frame"], call, event["text"])
        return True

    def _learn(self, frame: str, call: str, text: str) -> None:
        """Keep the devices of each joined call current, from the frames that change them."""
        if frame in ("hangup", "taken-over"):
            self.joined.pop(call, None)
            self.early.pop(call, None)
            if frame == "hangup":
                self.ended.add(call)
            return
        body = json.loads(text).get("body", {})
        if frame == "early-peer" and body.get("session"):
            self.early.setdefault(call, {})[body["session"]] = body["user"]
            return
        if frame == "early-left":
            self.early.get(call, {}).pop(body.get("session"), None)
            return
        if frame == "peer-joined":
            # Answered: that user's devices that rang early are done (one of them is in).
            early = self.early.get(call, {})
            for session in [s for s, user in early.items() if user == body.get("user")]:
                del early[session]
        peers = self.joined.get(call)
        if peers is None:
            return
        if frame == "peer-joined" and body.get("session"):
            peers[body["user"]] = body["session"]
        elif frame == "peer-left":
            peers.pop(body.get("user"), None)

    async def call_incoming(self, event: dict) -> None:
        await self.emit(
            "incoming",
            call=event["call"],
            body={
                "from": event["from"],
                "kind": event.get("kind", "video"),
                "group": event.get("group", False),
            },
        )

    async def call_answered(self, event: dict) -> None:
        if event.get("session") != self.session:
            self.early.pop(event["call"], None)  # another device answered: this one is done
            await self.emit("answered", call=event["call"], body={"elsewhere": True})

    async def call_ended(self, event: dict) -> None:
        """The user's group hears every end: devices that only rang need it; a device in the
        call gets it through its session instead."""
        if event["call"] in self.ended or event["call"] in self.joined:
            return
        self.ended.add(event["call"])
        self.early.pop(event["call"], None)
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
