from rest_framework import serializers

from config.api_errors import RejectUnknownFields, StrictCharField

from .ice_urls import IceUrl, IceUrlError, parse_ice_url


class IceServerSerializer(serializers.Serializer):
    urls = serializers.ListField(child=serializers.CharField())
    # Absent on a STUN-only entry (no relay could be handed out).
    username = serializers.CharField(required=False)
    credential = serializers.CharField(required=False)


class AssignedRelaySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    region = serializers.CharField(allow_blank=True)


class IceServersSerializer(serializers.Serializer):
    iceServers = IceServerSerializer(many=True)  # noqa: N815 - the WebRTC spelling
    ttl = serializers.IntegerField()
    expiresAt = serializers.DateTimeField()  # noqa: N815
    refreshAt = serializers.DateTimeField()  # noqa: N815
    relays = AssignedRelaySerializer(many=True)
    status = serializers.ChoiceField(choices=["ok", "no-healthy-relay"])
    grant = serializers.CharField(
        required=False,
        help_text="The credential grant: pass it back as ?keep= to refresh (same relays while "
        "they are healthy, and no new grant).",
    )
    reason = serializers.CharField(
        required=False, help_text="With no-healthy-relay: what that means for calls."
    )


class RelayFailureSerializer(RejectUnknownFields, serializers.Serializer):
    relayUrl = StrictCharField(max_length=300)  # noqa: N815 - the client's spelling
    problem = serializers.ChoiceField(
        choices=["allocation", "ice"],
        help_text="allocation: the relay refused or never answered an Allocate; ice: ICE failed "
        "on the relay's candidates.",
    )


class GatheredSerializer(RejectUnknownFields, serializers.Serializer):
    relayUrl = StrictCharField(max_length=300)  # noqa: N815 - the client's spelling
    ms = serializers.FloatField(min_value=0, max_value=60_000)


class RelayGatherSerializer(RejectUnknownFields, serializers.Serializer):
    gathered = GatheredSerializer(
        many=True,
        allow_empty=False,
        max_length=4,
        help_text="For each relay URL this device was given: milliseconds from starting ICE "
        "gathering to the first relay candidate from it.",
    )
    network = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=56,
        help_text="The region the client declares, if any (its measurements are shared with "
        "callers declaring the same); else its address's /24 or /48.",
    )


class MappingSerializer(RejectUnknownFields, serializers.Serializer):
    server = StrictCharField(max_length=300, help_text="The STUN URL that saw this address.")
    address = serializers.IPAddressField(help_text="The server-reflexive address.")
    port = serializers.IntegerField(min_value=1, max_value=65535)
    base = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=80,
        help_text="The local socket (address:port) it maps, when the browser shows it.",
    )


class RelayCheckSerializer(RejectUnknownFields, serializers.Serializer):
    url = StrictCharField(max_length=300, help_text="A turn: or turns: URL, with its transport.")

    def validate_url(self, value: str) -> IceUrl:
        try:
            url = parse_ice_url(value)
        except IceUrlError as exc:
            raise serializers.ValidationError(str(exc)) from exc
        if not url.is_turn:
            raise serializers.ValidationError("A turn: or turns: URL.")
        return url

    ok = serializers.BooleanField(help_text="Whether it gave a relay candidate.")
    ms = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=60_000,
        help_text="How long it took.",
    )


class LoopbackSerializer(RejectUnknownFields, serializers.Serializer):
    ok = serializers.BooleanField()
    ms = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=60_000)


class NetworkTestSerializer(RejectUnknownFields, serializers.Serializer):
    """What the browser found; the server decides the verdict (relays.nettest)."""

    mappings = MappingSerializer(many=True, max_length=16, default=list)
    hostAddresses = serializers.ListField(  # noqa: N815 - the API's JSON is camelCase
        child=StrictCharField(max_length=80), max_length=16, default=list
    )
    stunServers = serializers.IntegerField(min_value=0, max_value=8, default=0)  # noqa: N815
    relays = RelayCheckSerializer(many=True, max_length=24, default=list)
    loopback = LoopbackSerializer(required=False, allow_null=True)


class NetworkTestResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    createdAt = serializers.DateTimeField(source="created_at")  # noqa: N815
    network = serializers.CharField()
    networkType = serializers.CharField(source="network_type")  # noqa: N815
    verdict = serializers.CharField()
    sentence = serializers.SerializerMethodField()
    udp = serializers.BooleanField()
    details = serializers.JSONField()

    def get_sentence(self, result) -> str:
        return result.sentence
