"""The signaling protocol: envelope and message bodies, validated without Django.

Every frame is one JSON object:
    {"v": 1, "type": "...", "id": "<client uuid>", "seq": <server counter>, "call": "<id>", "body": {...}}
Clients send v, type, id, call (where it applies) and body; the server adds seq. See docs/signaling.md.
Written by hand rather than with a schema library: the rules are few, and errors must carry our codes.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass, field

VERSION = 1
MAX_SDP_CHARS = 32 * 1024
MAX_CANDIDATE_CHARS = 1024
CONNECTION_TYPES = ("host", "srflx", "prflx", "relay")

# type -> does it need a call id
CLIENT_TYPES: dict[str, bool] = {
    "ping": False,
    "join": True,
    "leave": True,
    "offer": True,
    "answer": True,
    "candidate": True,
    "hangup": True,
    "report": True,
    "resume": False,
    "accept": True,
    "early": True,
    "decline": True,
    "cancel": True,
    "take-over": True,
    "media-state": True,
    "stats": True,
    "invite": True,
    "chat": True,
    "relay-failure": False,
    "relay-gather": False,
}
RELAY_PROBLEMS = ("allocation", "ice")
HANGUP_REASONS = ("hangup", "failed")
MAX_SESSION_CHARS = 64
MAX_CHAT_CHARS = 2000


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, ref: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass
class ClientMessage:
    type: str
    id: str | None
    call: str | None
    body: dict = field(default_factory=dict)


def _call_id(text: str) -> str | None:
    """The canonical form of a call id, None when it isn't one."""
    if len(text) > 45:  # "urn:uuid:" and 36: no longer text is a UUID, and none is cached
        return None
    return _canonical_uuid(text)


@functools.lru_cache(maxsize=4096)
def _canonical_uuid(text: str) -> str | None:
    # Cached: a socket names the same call in every frame, and parsing it each time was 2% of
    # a relayed frame's CPU (issue 8).
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def parse_frame(text: str | None, *, max_bytes: int) -> ClientMessage:
    """Parse and validate one client frame. Raises ProtocolError with a code on any bad input."""
    if text is None:
        raise ProtocolError("binary_not_supported", "Send JSON text frames, not binary.")
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError("frame_too_large", f"Frames are limited to {max_bytes} bytes.")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_envelope", "The frame must be a JSON object.")
    ref = data.get("id") if isinstance(data.get("id"), str) and len(data["id"]) <= 64 else None
    if data.get("v") != VERSION:
        raise ProtocolError("bad_version", f"Only protocol version {VERSION} is spoken here.", ref)
    mtype = data.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("bad_envelope", "`type` must be a string.", ref)
    if mtype not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"Unknown message type {mtype[:40]!r}.", ref)
    body = data.get("body", {})
    if not isinstance(body, dict):
        raise ProtocolError("bad_envelope", "`body` must be an object.", ref)
    call = data.get("call")
    if CLIENT_TYPES[mtype]:
        if not isinstance(call, str):
            raise ProtocolError("bad_envelope", f"`{mtype}` needs a `call` id.", ref)
        call = _call_id(call)
        if call is None:
            raise ProtocolError("bad_envelope", "`call` is not a call id.", ref)
    else:
        call = None
    msg = ClientMessage(type=mtype, id=ref, call=call, body=body)
    _validate_body(msg)
    return msg


def _validate_body(msg: ClientMessage) -> None:
    b = msg.body
    if msg.type in ("offer", "answer", "candidate"):
        to = b.get("to")
        if to is not None and (not isinstance(to, str) or not 0 < len(to) <= MAX_SESSION_CHARS):
            raise ProtocolError("bad_body", "`to` must be a device session id.", msg.id)
    else:
        to = None
    _validate_type_body(msg)
    if to is not None:
        msg.body["to"] = to


def _validate_type_body(msg: ClientMessage) -> None:
    b = msg.body
    if msg.type in ("offer", "answer"):
        desc = b.get("description")
        if (
            not isinstance(desc, dict)
            or desc.get("type") != msg.type
            or not isinstance(desc.get("sdp"), str)
            or len(desc["sdp"]) > MAX_SDP_CHARS
        ):
            raise ProtocolError(
                "bad_body",
                f"`{msg.type}` needs body.description = {{type: '{msg.type}', sdp: <string>}}.",
                msg.id,
            )
        msg.body = {"description": {"type": desc["type"], "sdp": desc["sdp"]}}
    elif msg.type == "candidate":
        cand = b.get("candidate")
        if cand is None:  # end of candidates
            msg.body = {"candidate": None}
            return
        if (
            not isinstance(cand, dict)
            or not isinstance(cand.get("candidate"), str)
            or len(cand["candidate"]) > MAX_CANDIDATE_CHARS
        ):
            raise ProtocolError(
                "bad_body",
                "`candidate` needs body.candidate = RTCIceCandidateInit or null.",
                msg.id,
            )
        clean = {"candidate": cand["candidate"]}
        for key in ("sdpMid", "sdpMLineIndex", "usernameFragment"):
            if key in cand and (cand[key] is None or isinstance(cand[key], str | int)):
                clean[key] = cand[key]
        msg.body = {"candidate": clean}
    elif msg.type == "relay-failure":
        relay_url, problem = b.get("relayUrl"), b.get("problem")
        if not isinstance(relay_url, str) or not 0 < len(relay_url) <= 300:
            raise ProtocolError("bad_body", "`relayUrl` must be the relay's URL.", msg.id)
        if problem not in RELAY_PROBLEMS:
            raise ProtocolError(
                "bad_body", f"`problem` must be one of {', '.join(RELAY_PROBLEMS)}.", msg.id
            )
        msg.body = {"relayUrl": relay_url, "problem": problem}
    elif msg.type == "relay-gather":
        msg.body = {"gathered": parse_gathered(b.get("gathered"), msg.id)}
    elif msg.type == "report":
        ctype, relay_url = _path(b, "connectionType", msg)
        msg.body = {
            "connectionType": ctype,
            "relayUrl": relay_url,
            "rttMs": _number(b.get("rttMs"), "rttMs", 600_000, msg.id),
        }
    elif msg.type == "join":
        resume = b.get("resume", False)
        if not isinstance(resume, bool):
            raise ProtocolError("bad_body", "`join` takes body.resume = true or false.", msg.id)
        replaces = b.get("replaces") or ""
        if not isinstance(replaces, str) or len(replaces) > MAX_SESSION_CHARS:
            raise ProtocolError("bad_body", "`replaces` must be a session id.", msg.id)
        msg.body = {"resume": resume, "replaces": replaces}
    elif msg.type == "accept":
        video = b.get("video", True)
        if not isinstance(video, bool):
            raise ProtocolError("bad_body", "`accept` takes body.video = true or false.", msg.id)
        msg.body = {"video": video}
    elif msg.type == "resume":
        session, last = b.get("session"), b.get("lastSeq")
        if (
            not isinstance(session, str)
            or not 0 < len(session) <= MAX_SESSION_CHARS
            or not isinstance(last, int)
            or isinstance(last, bool)
            or last < 0
        ):
            raise ProtocolError(
                "bad_body", "`resume` needs body.session (string) and body.lastSeq (>= 0).", msg.id
            )
        msg.body = {"session": session, "lastSeq": last}
    elif msg.type == "media-state":
        flags = {k: b.get(k) for k in ("audio", "video", "screen")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise ProtocolError(
                "bad_body", "`media-state` needs body.audio, .video and .screen (booleans).", msg.id
            )
        msg.body = flags
    elif msg.type == "stats":
        path, relay_url = _path(b, "path", msg)
        out: dict = {"path": path, "relay_url": relay_url}
        for key, name, top in (
            ("rttMs", "rtt_ms", 600_000),
            ("lossPct", "loss_pct", 100),
            ("bitrateKbps", "bitrate_kbps", 10_000_000),
        ):
            out[name] = _number(b.get(key), key, top, msg.id)
        msg.body = out
    elif msg.type == "invite":
        username = b.get("username")
        if not isinstance(username, str) or not 0 < len(username.strip()) <= 150:
            raise ProtocolError("bad_body", "`invite` needs body.username.", msg.id)
        msg.body = {"username": username.strip()}
    elif msg.type == "chat":
        text = b.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad_body", "`chat` needs body.text, a non-empty string.", msg.id)
        if len(text) > MAX_CHAT_CHARS:
            raise ProtocolError(
                "bad_body", f"Chat messages are limited to {MAX_CHAT_CHARS} characters.", msg.id
            )
        msg.body = {"text": text.strip()}
    elif msg.type == "hangup":
        reason = b.get("reason", "hangup")
        if reason not in HANGUP_REASONS:
            raise ProtocolError(
                "bad_body", f"`hangup` reason must be one of {', '.join(HANGUP_REASONS)}.", msg.id
            )
        msg.body = {"reason": reason}
    else:
        msg.body = {}


def _path(b: dict, key: str, msg: ClientMessage) -> tuple[str, str]:
    """A candidate pair's type (body[key]) and the relay URL it went through, if any."""
    kind = b.get(key)
    if kind not in CONNECTION_TYPES:
        raise ProtocolError(
            "bad_body",
            f"`{msg.type}` needs body.{key}, one of {', '.join(CONNECTION_TYPES)}.",
            msg.id,
        )
    relay_url = b.get("relayUrl") or ""
    if not isinstance(relay_url, str) or len(relay_url) > 300:
        raise ProtocolError("bad_body", "`relayUrl` must be a short string.", msg.id)
    return kind, relay_url


MAX_GATHERED = 4
MAX_GATHER_MS = 60_000


def parse_gathered(value, ref: str | None = None) -> list[tuple[str, float]]:
    """`[{relayUrl, ms}, …]`: how long each relay took to give this device a relay candidate."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_GATHERED:
        raise ProtocolError(
            "bad_body", f"`gathered` must list 1 to {MAX_GATHERED} {{relayUrl, ms}}.", ref
        )
    out = []
    for item in value:
        url = item.get("relayUrl") if isinstance(item, dict) else None
        if not isinstance(url, str) or not 0 < len(url) <= 300:
            raise ProtocolError("bad_body", "each `relayUrl` must be a relay's URL.", ref)
        ms = _number(item.get("ms"), "ms", MAX_GATHER_MS, ref)
        if ms is None:
            raise ProtocolError("bad_body", "each entry needs `ms`.", ref)
        out.append((url, ms))
    return out


def _number(value, name: str, top: float, ref: str | None) -> float | None:
    """An optional, finite, non-negative number below `top`."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= top:
        raise ProtocolError("bad_body", f"`{name}` must be a number from 0 to {top}.", ref)
    return float(value)
