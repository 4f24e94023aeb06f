"""Property tests: whatever a client sends, parsing ends in a message or a coded error."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relays.ice_urls import IceUrlError, parse_ice_url
from signaling.protocol import CLIENT_TYPES, ClientMessage, ProtocolError, parse_frame

pytestmark = pytest.mark.smoke
MAX = 64 * 1024

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None])},
    optional={
        "type": st.sampled_from([*CLIENT_TYPES, "teleport", "", 7]),
        "id": st.text(max_size=80) | st.integers(),
        "call": st.uuids().map(str) | st.text(max_size=40) | st.none(),
        "body": json_values,
    },
)


def _parse(text):
    try:
        return parse_frame(text, max_bytes=MAX)
    except ProtocolError as exc:
        assert exc.code and exc.message
        return exc


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_message_or_a_coded_error(text):
    assert isinstance(_parse(text), ClientMessage | ProtocolError)


@settings(max_examples=600, deadline=None)
@given(envelopes)
def test_any_envelope_is_a_message_or_a_coded_error(frame):
    out = _parse(json.dumps(frame))
    if isinstance(out, ClientMessage):
        # What passes is what the server relays: only known types, clean bodies, real call ids.
        assert out.type in CLIENT_TYPES and isinstance(out.body, dict)
        if CLIENT_TYPES[out.type]:
            assert out.call is not None and len(out.call) == 36
        assert json.dumps(out.body)  # serializable as it will be forwarded


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_ice_url_parsing_never_fails_any_other_way(text):
    try:
        url = parse_ice_url(text)
    except IceUrlError:
        return
    assert url.scheme in ("stun", "stuns", "turn", "turns") and 0 < url.port < 65536


@pytest.mark.parametrize(
    ("call", "canonical"),
    [
        ("00000000-0000-4000-8000-00000000000A", "00000000-0000-4000-8000-00000000000a"),
        ("urn:uuid:00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000a"),
        ("{00000000000040008000-00000000000a}", "00000000-0000-4000-8000-00000000000a"),
        ("0" * 46, None),
        ("00000000-0000-4000-8000-00000000000a" + " " * 20_000, None),
        ("not-a-call", None),
    ],
)
def test_a_call_id_is_read_in_its_canonical_form_and_nothing_long_is_kept(call, canonical):
    from signaling.protocol import _canonical_uuid

    before = _canonical_uuid.cache_info().currsize
    got = _parse(json.dumps({"v": 1, "type": "join", "call": call}))
    if canonical is None:
        assert isinstance(got, ProtocolError) and got.code == "bad_envelope"
    else:
        assert isinstance(got, ClientMessage) and got.call == canonical
    if len(call) > 45:  # the cache only ever holds call-id-sized strings
        assert _canonical_uuid.cache_info().currsize == before


def test_autobahn_debug_arguments_cost_nothing_once_quieted():
    import autobahn.twisted.websocket as twisted_ws
    import autobahn.websocket.protocol as ws_protocol

    from signaling.under_daphne import quiet_autobahn_debug_arguments

    quiet_autobahn_debug_arguments()
    for module in (ws_protocol, twisted_ws):
        assert module.hltype(module.__dict__.get("WebSocketServerProtocol", object)) == ""
        assert module.hlval(12345) == ""
