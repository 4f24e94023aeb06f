from rest_framework import serializers


class IceServerSerializer(serializers.Serializer):
    urls = serializers.ListField(child=serializers.CharField())
    username = serializers.CharField()
    credential = serializers.CharField()


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
