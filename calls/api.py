"""REST endpoints for calls: list your calls, start one, read one."""

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView, ListAPIView, RetrieveAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from config.api_errors import Conflict, RateLimited, ServiceUnavailable

from .models import Call
from .ratelimits import call_start_retry_after
from .selectors import call_history_for, participant_for
from .serializers import (
    CallCreateSerializer,
    CallSerializer,
    InvitationSerializer,
    ParticipantSerializer,
)
from .services import CallError, CallUnavailable, call_invite, call_start


class CallListCreateApi(ListAPIView):
    serializer_class = CallSerializer

    def get_queryset(self):
        return call_history_for(user=self.request.user)

    @extend_schema(
        request=CallCreateSerializer, responses={201: CallSerializer, 200: CallSerializer}
    )
    def post(self, request: Request) -> Response:
        ser = CallCreateSerializer(data=request.data, context={"request": request})
        ser.is_valid(raise_exception=True)
        callee = ser.validated_data["callee"]
        retry_after = call_start_retry_after(request, callee=callee)
        if retry_after is not None:
            raise RateLimited(
                f"Too many calls; try again in {retry_after} s.", retry_after=retry_after
            )
        try:
            call = call_start(caller=request.user, callee=callee, kind=ser.validated_data["kind"])
        except CallUnavailable as exc:
            raise ServiceUnavailable(exc.message) from exc
        except CallError as exc:
            raise ValidationError({"callee": [exc.message]}) from exc
        # Glare: the callee's own call to us still rang, and is the call (200, not created).
        return Response(
            CallSerializer(call_history_for(user=request.user).get(pk=call.pk)).data,
            status=201 if call.created_by_id == request.user.pk else 200,
        )


class CallDetailApi(RetrieveAPIView):
    serializer_class = CallSerializer
    lookup_url_kwarg = "call_id"

    def get_object(self):
        try:
            return call_history_for(user=self.request.user).get(pk=self.kwargs["call_id"])
        except Call.DoesNotExist as exc:  # other people's calls are simply not found
            raise Http404("No such call.") from exc


# Refusals that are about the call's state, not the request: 409.
INVITE_CONFLICTS = (
    "call_full",
    "already_in_call",
    "busy",
    "call_ended",
    "not_joined",
    "not_answered",
)


class CallInvitationApi(GenericAPIView):
    """Invite someone into a call you are in (a group call, up to CALL_MAX_PARTICIPANTS)."""

    serializer_class = InvitationSerializer

    @extend_schema(request=InvitationSerializer, responses={201: ParticipantSerializer})
    def post(self, request: Request, call_id) -> Response:
        me = participant_for(call_id=call_id, user=request.user)
        if me is None:  # other people's calls are simply not found
            raise Http404("No such call.")
        ser = InvitationSerializer(data=request.data, context={"request": request})
        ser.is_valid(raise_exception=True)
        try:
            invited = call_invite(participant=me, invitee=ser.validated_data["username"])
        except CallError as exc:
            if exc.code in INVITE_CONFLICTS:
                raise Conflict(exc.message, code=exc.code) from exc
            raise ValidationError({"username": [exc.message]}, code=exc.code) from exc
        return Response(ParticipantSerializer(invited).data, status=201)
