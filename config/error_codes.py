"""Every machine-readable error code the platform answers with: the REST API's
`{"error": {"code", …}}` (config.api_errors) and the signaling socket's `error` frames
(docs/signaling.md) draw from this one list. tests/test_error_codes.py finds every code the
code raises and fails on one that isn't here."""

ERROR_CODES: dict[str, str] = {
    # requests
    "invalid": "The request is not valid; `fields` names what is wrong (REST).",
    "bad_request": "The address holds a NUL character.",
    "bad_json": "The body (or frame) is not JSON, or nests too deeply.",
    "bad_envelope": "A socket frame without the envelope's fields (v, type, id, body).",
    "bad_version": "A socket frame of a protocol version this server doesn't speak.",
    "bad_body": "A socket frame whose body is wrong for its type.",
    "unknown_type": "A socket frame of a type the protocol doesn't have.",
    "binary_not_supported": "A binary socket frame: the protocol is JSON text.",
    "frame_too_large": "A socket frame over SIGNALING_MAX_FRAME_BYTES.",
    "method_not_allowed": "That HTTP method is not allowed on this endpoint.",
    "not_acceptable": "The Accept header asks for something other than JSON.",
    "unsupported_media_type": "A body that is not JSON (or a form, where forms are taken).",
    "error": "Something else went wrong with the request.",
    # who you are
    "unauthenticated": "No credentials, or not valid ones (401).",
    "forbidden": "Not allowed: a key without the scope, or not yours to do.",
    "signed_out": "The session that held this socket signed out.",
    "account_disabled": "This account is disabled.",
    "ticket_invalid": "A join ticket or device token that is not valid (or its user is gone).",
    "ticket_expired": "A join ticket past TICKET_TTL_SECONDS.",
    "ticket_used": "A join ticket that was used already (they are single-use).",
    "device_expired": "A device token past DEVICE_TOKEN_HOURS.",
    "origin_refused": "A ticket or device token from an origin its integrator doesn't allow.",
    # what you asked for
    "not_found": "No such thing, or not yours (the two look the same).",
    "conflict": "The request is fine, but the thing's state refuses it.",
    "rate_limited": "Too many requests: retry after Retry-After (or retryAfter).",
    "ice_limited": "Relay credentials asked for more often than ICE_ISSUE_RATE allows.",
    "report_limited": "Relay failure reports past RELAY_REPORT_RATE.",
    "measure_limited": "Relay gather-time reports past RELAY_GATHER_RATE.",
    "network_test_limited": "Network test results past NETWORK_TEST_RATE.",
    "unavailable": "Briefly unavailable (Redis or the database can't be reached), or the person is.",
    "internal": "The server failed on this frame; the socket stays up.",
    # calls
    "bad_callee": "That person can't be called (no such account, yourself, or out of reach).",
    "busy": "That person is in another call.",
    "call_full": "The call has CALL_MAX_PARTICIPANTS people ringing or in it.",
    "call_ended": "The call has ended.",
    "already_in_call": "That person is in this call already.",
    "in_call_elsewhere": "This call is on another of your devices: take it over to move it here.",
    "answered_elsewhere": "Answered on another of your devices.",
    "not_answered": "Only once the call is answered.",
    "not_joined": "Join the call first.",
    "not_ringing": "The call doesn't ring any more.",
    "early_ice_off": "`early` on a server with CALL_EARLY_ICE off: negotiate after the answer.",
    "early_full": "`early` from one device too many of a call: this one negotiates after answering.",
    "wrong_role": "Only the other side may do that (e.g. the callee declines).",
    "not_a_peer": "`to` names no device in this call.",
    "peer_not_present": "The device `to` names is not in the call right now.",
    "to_required": "A group call: say which device (`to`).",
    "resume_failed": "The device session can't be resumed: join afresh.",
}
