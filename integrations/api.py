"""The integrator's own endpoints."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api_errors import RejectUnknownFields, StrictCharField, StrictRegexField

from .auth import ANY_KEY, IntegratorPrincipal, key_principal
from .models import Scope, WebhookEndpoint, WebhookEventType
from .selectors import end_user
from .services import EXTERNAL_ID, end_user_delete, end_user_upsert
from .tickets import ticket_mint


def require_key(request: Request) -> IntegratorPrincipal:
    """The integrator behind this request: these endpoints are for API keys only."""
    principal = key_principal(request)
    if principal is None:
        raise PermissionDenied("This endpoint is for integrators: send an API key.")
    return principal


class WhoAmIApi(APIView):
    """Who this request is: with an API key, its integrator, prefix and scopes (check a key
    with this); signed in, the person."""

    key_scopes = {"GET": ANY_KEY}

    @extend_schema(
        responses=inline_serializer(
            "WhoAmI",
            {
                "kind": serializers.ChoiceField(choices=["key", "user"]),
                "integrator": serializers.CharField(required=False),
                "key": serializers.CharField(required=False, help_text="the key's prefix"),
                "scopes": serializers.ListField(child=serializers.CharField(), required=False),
                "user": serializers.DictField(required=False),
            },
        )
    )
    def get(self, request: Request) -> Response:
        principal = key_principal(request)
        if principal is not None:
            return Response(
                {
                    "kind": "key",
                    "integrator": principal.integrator.slug,
                    "key": principal.key.prefix,
                    "scopes": sorted(principal.scopes),
                }
            )
        return Response({"kind": "user", "user": request.user.card()})


class EndUserSerializer(RejectUnknownFields, serializers.Serializer):
    externalId = StrictRegexField(  # noqa: N815 - the API's spelling
        EXTERNAL_ID.pattern,
        max_length=80,
        help_text="Your id for the person: 1-80 letters, digits and . _ - @ : +",
    )
    displayName = StrictCharField(max_length=80, allow_blank=True)  # noqa: N815
    createdAt = serializers.DateTimeField(read_only=True, source="date_joined")  # noqa: N815


def end_user_body(user) -> dict:
    return {
        "externalId": user.external_id,
        "displayName": user.display_name,
        "createdAt": user.date_joined.isoformat(),
    }


class EndUsersApi(APIView):
    """Your end users: `POST` makes one or renames it (by your `externalId`)."""

    key_scopes = {"POST": Scope.USERS_WRITE}

    @extend_schema(
        request=EndUserSerializer, responses={200: EndUserSerializer, 201: EndUserSerializer}
    )
    def post(self, request: Request) -> Response:
        principal = require_key(request)
        ser = EndUserSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        user, created = end_user_upsert(
            integrator=principal.integrator,
            external_id=ser.validated_data["externalId"],
            display_name=ser.validated_data["displayName"],
        )
        return Response(end_user_body(user), status=201 if created else 200)


class EndUserApi(APIView):
    """One of your end users: read it, or delete it with its personal data."""

    key_scopes = {"GET": Scope.USERS_WRITE, "DELETE": Scope.USERS_WRITE}

    def _user(self, request: Request, external_id: str):
        principal = require_key(request)
        # A closed account can still be read and deleted.
        user = end_user(integrator=principal.integrator, external_id=external_id, active_only=False)
        if user is None:
            raise NotFound("You have no user with that externalId.")
        return principal, user

    @extend_schema(responses=EndUserSerializer)
    def get(self, request: Request, external_id: str) -> Response:
        _principal, user = self._user(request, external_id)
        return Response(end_user_body(user))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, external_id: str) -> Response:
        principal, _user = self._user(request, external_id)
        end_user_delete(integrator=principal.integrator, external_id=external_id)
        return Response(status=204)


class TicketRequestSerializer(RejectUnknownFields, serializers.Serializer):
    user = StrictRegexField(EXTERNAL_ID.pattern, max_length=80, help_text="The externalId.")
    call = serializers.UUIDField(
        required=False, help_text="A call the user is in: the page learns it in its welcome."
    )


class TicketApi(APIView):
    """A join ticket for one of your users: hand it to their page, which opens
    `/ws/signal/?ticket=…` (or the embed page) with it, once, within TICKET_TTL_SECONDS. The
    socket's welcome then carries a `deviceToken` for its reconnects (`?device=…`)."""

    key_scopes = {"POST": Scope.USERS_WRITE}

    @extend_schema(
        request=TicketRequestSerializer,
        responses={
            201: inline_serializer(
                "Ticket",
                {"ticket": serializers.CharField(), "expiresAt": serializers.DateTimeField()},
            )
        },
    )
    def post(self, request: Request) -> Response:
        from calls.models import Participant

        principal = require_key(request)
        ser = TicketRequestSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        user = end_user(integrator=principal.integrator, external_id=ser.validated_data["user"])
        if user is None:
            raise NotFound("You have no user with that externalId.")
        call = ser.validated_data.get("call")
        if call is not None and not Participant.objects.filter(call_id=call, user=user).exists():
            raise NotFound("That user is in no such call.")
        ticket, expires_at = ticket_mint(user=user, call_id=call)
        return Response({"ticket": ticket, "expiresAt": expires_at.isoformat()}, status=201)


class WebhookSerializer(RejectUnknownFields, serializers.ModelSerializer):
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEventType.values),
        required=False,
        help_text="The event types to send ([] or absent: all).",
    )
    description = StrictCharField(max_length=200, required=False, allow_blank=True)

    class Meta:
        model = WebhookEndpoint
        fields = ("id", "url", "events", "enabled", "description", "created_at")
        read_only_fields = ("id", "created_at")


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="The signing secret (Standard Webhooks, whsec_…): shown here once.",
    )

    class Meta(WebhookSerializer.Meta):
        fields = (*WebhookSerializer.Meta.fields, "secret")


class WebhooksApi(APIView):
    """Your webhook subscriptions: list them, or add one (its secret is in this answer only)."""

    key_scopes = {"GET": Scope.WEBHOOKS, "POST": Scope.WEBHOOKS}

    @extend_schema(responses=WebhookSerializer(many=True))
    def get(self, request: Request) -> Response:
        principal = require_key(request)
        endpoints = WebhookEndpoint.objects.filter(integrator=principal.integrator)
        return Response(WebhookSerializer(endpoints, many=True).data)

    @extend_schema(request=WebhookSerializer, responses={201: WebhookCreatedSerializer})
    def post(self, request: Request) -> Response:
        principal = require_key(request)
        ser = WebhookSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        endpoint = ser.save(integrator=principal.integrator)
        return Response(WebhookCreatedSerializer(endpoint).data, status=201)


class WebhookApi(APIView):
    """One of your webhook subscriptions: read, change (url, events, enabled, description) or
    remove it. Its secret is never shown again."""

    key_scopes = {"GET": Scope.WEBHOOKS, "PATCH": Scope.WEBHOOKS, "DELETE": Scope.WEBHOOKS}

    def _endpoint(self, request: Request, webhook_id: int) -> WebhookEndpoint:
        principal = require_key(request)
        endpoint = WebhookEndpoint.objects.filter(
            integrator=principal.integrator, pk=webhook_id
        ).first()
        if endpoint is None:
            raise NotFound("You have no such webhook.")
        return endpoint

    @extend_schema(responses=WebhookSerializer)
    def get(self, request: Request, webhook_id: int) -> Response:
        return Response(WebhookSerializer(self._endpoint(request, webhook_id)).data)

    @extend_schema(request=WebhookSerializer, responses=WebhookSerializer)
    def patch(self, request: Request, webhook_id: int) -> Response:
        ser = WebhookSerializer(
            self._endpoint(request, webhook_id), data=request.data, partial=True
        )
        ser.is_valid(raise_exception=True)
        return Response(WebhookSerializer(ser.save()).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, webhook_id: int) -> Response:
        self._endpoint(request, webhook_id).delete()
        return Response(status=204)
