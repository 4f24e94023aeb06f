import pytest

from relays.ice_urls import IceUrlError, parse_ice_url

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "transport", "label"),
    [
        ("stun:relay.example", "stun", "relay.example", 3478, "udp", "udp"),
        ("turn:relay.example:3479?transport=tcp", "turn", "relay.example", 3479, "tcp", "tcp"),
        ("turn:203.0.113.5?transport=udp", "turn", "203.0.113.5", 3478, "udp", "udp"),
        ("turns:relay.example:443?transport=tcp", "turns", "relay.example", 443, "tcp", "tls"),
        ("turns:relay.example", "turns", "relay.example", 5349, "tcp", "tls"),
        ("turn:[2001:db8::1]:3478?transport=udp", "turn", "2001:db8::1", 3478, "udp", "udp"),
    ],
)
def test_parses_what_browsers_accept(text, scheme, host, port, transport, label):
    u = parse_ice_url(text)
    assert (u.scheme, u.host, u.port, u.transport, u.label) == (
        scheme,
        host,
        port,
        transport,
        label,
    )


@pytest.mark.parametrize(
    "text",
    [
        "http://relay.example",
        "turn:",
        "turn:relay.example:99999",
        "turns:relay.example?transport=udp",
        "stun:relay.example?transport=tcp",
        "turn:relay example",
        "turn:relay.example?transport=sctp",
    ],
)
def test_refuses_what_is_not_an_ice_url(text):
    with pytest.raises(IceUrlError):
        parse_ice_url(text)


@pytest.mark.parametrize(
    ("text", "stun"),
    [
        ("stun:relay.example:3478", "stun:relay.example:3478"),
        ("turn:relay.example:3478?transport=udp", "stun:relay.example:3478"),
        ("turn:[2001:db8::1]:3478", "stun:[2001:db8::1]:3478"),
        ("turn:relay.example:3478?transport=tcp", None),
        ("turns:relay.example:443?transport=tcp", None),
    ],
)
def test_where_a_url_answers_stun(text, stun):
    assert parse_ice_url(text).stun_url == stun
