"""The integrator's own endpoints."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .auth import ANY_KEY, key_principal


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
