from rest_framework import serializers

from config.api_errors import RejectUnknownFields, StrictCharField

from .models import Call, CallKind, Participant
from .selectors import NotCallable, callee_for


class ParticipantSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    externalId = serializers.CharField(  # noqa: N815 - the API's spelling for integrators
        source="user.external_id", read_only=True, allow_null=True, default=None
    )
    relay = serializers.CharField(
        source="relay.name", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = Participant
        fields = (
            "username",
            "externalId",
            "role",
            "state",
            "joined_at",
            "left_at",
            "connection_type",
            "relay",
            "rtt_ms",
        )


class CallSerializer(serializers.ModelSerializer):
    participants = ParticipantSerializer(many=True, read_only=True)

    class Meta:
        model = Call
        fields = (
            "id",
            "kind",
            "state",
            "created_at",
            "answered_at",
            "connected_at",
            "ended_at",
            "end_reason",
            "missed",
            "updated_at",
            "participants",
        )


class CallCreateSerializer(RejectUnknownFields, serializers.Serializer):
    callee = StrictCharField(max_length=150, help_text="The username to call.")
    kind = serializers.ChoiceField(choices=CallKind.choices, default=CallKind.VIDEO)

    def validate_callee(self, value: str):
        try:
            return callee_for(caller=self.context["request"].user, username=value)
        except NotCallable as exc:
            raise serializers.ValidationError(str(exc)) from exc


class IntegratorCallCreateSerializer(RejectUnknownFields, serializers.Serializer):
    participants = serializers.ListField(
        child=StrictCharField(max_length=80),
        min_length=2,
        max_length=2,
        help_text="Two of your users' externalIds: the first calls the second. Invite more "
        "once it is answered.",
    )
    kind = serializers.ChoiceField(choices=CallKind.choices, default=CallKind.VIDEO)


class InvitationSerializer(RejectUnknownFields, serializers.Serializer):
    username = StrictCharField(max_length=150, help_text="The username to invite.")

    def validate_username(self, value: str):
        try:
            return callee_for(caller=self.context["request"].user, username=value)
        except NotCallable as exc:
            raise serializers.ValidationError(str(exc)) from exc
