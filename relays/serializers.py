from rest_framework import serializers

from config.api_errors import RejectUnknownFields, StrictCharField


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
