"""REST endpoints for calls: list your calls, start one, read one."""

from django.http import Http404
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView, ListAPIView, RetrieveAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from config.api_errors import Conflict, RateLimited, ServiceUnavailable
from integrations.auth import key_principal
from integrations.models import Scope
from integrations.selectors import end_user

from .models import Call, CallState, EndReason, Participant, ParticipantRole
from .ratelimits import call_start_retry_after
from .selectors import call_history_for, calls_of_integrator, participant_for
from .serializers import (
    CallCreateSerializer,
    CallSerializer,
    IntegratorCallCreateSerializer,
    InvitationSerializer,
    ParticipantSerializer,
)
from .services import (
    CallError,
    CallUnavailable,
    call_end,
    call_invite,
    call_start,
)


class CallCursor(CursorPagination):
    """Cursor pages (stable under inserts): ?limit= (default 50, at most 200), ?ordering= one
    of ORDERINGS, ?cursor= from `next`/`previous`."""

    page_size = 50
    max_page_size = 200
    page_size_query_param = "limit"
    ordering = "-created_at"
    ORDERINGS = ("-created_at", "created_at", "-updated_at", "updated_at")

    def get_ordering(self, request, queryset, view):
        wanted = request.query_params.get("ordering", self.ordering)
        if wanted not in self.ORDERINGS:
            raise ValidationError({"ordering": [f"One of {', '.join(self.ORDERINGS)}."]})
        return (wanted, "-id" if wanted.startswith("-") else "id")


def calls_visible_to(request: Request):
    """Your calls (signed in), or your users' calls (an API key): everyone else's are not found."""
    principal = key_principal(request)
    if principal is not None:
        return calls_of_integrator(integrator=principal.integrator)
    return call_history_for(user=request.user)


def filtered(request: Request, calls):
    """?state=, ?user= (a username, or for API keys an externalId), ?updated_since= (ISO 8601)."""
    params = request.query_params
    state = params.get("state")
    if state is not None:
        if state not in CallState.values:
            raise ValidationError({"state": [f"One of {', '.join(CallState.values)}."]})
        calls = calls.filter(state=state)
    who = params.get("user")
    if who is not None:
        field = "external_id" if key_principal(request) else "username__iexact"
        calls = calls.filter(
            pk__in=Participant.objects.filter(**{f"user__{field}": who}).values("call_id")
        )
    since = params.get("updated_since")
    if since is not None:
        when = parse_datetime(since)
        if when is None or when.tzinfo is None:
            raise ValidationError(
                {"updated_since": ["An ISO 8601 time with its offset, e.g. 2026-01-31T12:00:00Z."]}
            )
        calls = calls.filter(updated_at__gte=when)
    return calls


LIST_PARAMETERS = [
    OpenApiParameter("state", str, enum=CallState.values),
    OpenApiParameter("user", str, description="A participant: username, or with a key externalId."),
    OpenApiParameter("updated_since", str, description="Calls changed since (ISO 8601)."),
    OpenApiParameter("ordering", str, enum=list(CallCursor.ORDERINGS)),
    OpenApiParameter("limit", int, description="Per page: 50 unless given, at most 200."),
]


class CallListCreateApi(ListAPIView):
    """Calls: list yours (signed in) or your users' (API key), start one."""

    serializer_class = CallSerializer
    pagination_class = CallCursor
    key_scopes = {"GET": Scope.CALLS_READ, "POST": Scope.CALLS_WRITE}

    def get_queryset(self):
        return filtered(self.request, calls_visible_to(self.request))

    @extend_schema(parameters=LIST_PARAMETERS)
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=PolymorphicProxySerializer(
            "CallStart",
            serializers=[CallCreateSerializer, IntegratorCallCreateSerializer],
            resource_type_field_name=None,
        ),
        responses={201: CallSerializer, 200: CallSerializer},
        description="Signed in: `{callee: username}`. With an API key: `{participants: "
        "[externalId, externalId]}`, the first calling the second.",
    )
    def post(self, request: Request) -> Response:
        principal = key_principal(request)
        if principal is not None:
            caller, callee, kind = self._integrator_pair(request, principal)
        else:
            ser = CallCreateSerializer(data=request.data, context={"request": request})
            ser.is_valid(raise_exception=True)
            caller, callee, kind = (
                request.user,
                ser.validated_data["callee"],
                ser.validated_data["kind"],
            )
            retry_after = call_start_retry_after(request, callee=callee)
            if retry_after is not None:
                raise RateLimited(
                    f"Too many calls; try again in {retry_after} s.", retry_after=retry_after
                )
        try:
            call = call_start(caller=caller, callee=callee, kind=kind)
        except CallUnavailable as exc:
            raise ServiceUnavailable(exc.message) from exc
        except CallError as exc:
            field = "participants" if principal is not None else "callee"
            raise ValidationError({field: [exc.message]}) from exc
        # Glare: the callee's own call to us still rang, and is the call (200, not created).
        return Response(
            CallSerializer(calls_visible_to(request).get(pk=call.pk)).data,
            status=201 if call.created_by_id == caller.pk else 200,
        )

    def _integrator_pair(self, request: Request, principal):
        ser = IntegratorCallCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        ids = ser.validated_data["participants"]
        if ids[0] == ids[1]:
            raise ValidationError({"participants": ["Two different users."]})
        found = {i: end_user(integrator=principal.integrator, external_id=i) for i in ids}
        users = {i: u for i, u in found.items() if u is not None}
        missing = [i for i in ids if i not in users]
        if missing:
            raise ValidationError(
                {"participants": [f"You have no user {', '.join(map(repr, missing))}."]}
            )
        return users[ids[0]], users[ids[1]], ser.validated_data["kind"]


class CallDetailApi(RetrieveAPIView):
    serializer_class = CallSerializer
    lookup_url_kwarg = "call_id"
    key_scopes = {"GET": Scope.CALLS_READ}

    def get_object(self):
        try:
            return calls_visible_to(self.request).get(pk=self.kwargs["call_id"])
        except Call.DoesNotExist as exc:  # other people's calls are simply not found
            raise Http404("No such call.") from exc


class CallEndApi(GenericAPIView):
    """End a call for everyone in it (ringing, or under way). Ending an ended call changes
    nothing and answers the same."""

    serializer_class = CallSerializer
    key_scopes = {"POST": Scope.CALLS_WRITE}

    @extend_schema(request=None, responses={200: CallSerializer})
    def post(self, request: Request, call_id) -> Response:
        visible = calls_visible_to(request)
        if not visible.filter(pk=call_id).exists():
            raise Http404("No such call.")
        principal = key_principal(request)
        # Under way: hung up for everyone. Ringing: cancelled (missed for the callee), or
        # declined when the callee ends it.
        while_ringing = EndReason.CANCELLED
        if principal is None:
            me = participant_for(call_id=call_id, user=request.user)
            if me is not None and me.role == ParticipantRole.CALLEE:
                while_ringing = EndReason.DECLINED
        call_end(
            call_id=call_id,
            user=None if principal else request.user,
            reason=EndReason.HANGUP,
            reason_while_ringing=while_ringing,
        )
        return Response(CallSerializer(visible.get(pk=call_id)).data)


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
