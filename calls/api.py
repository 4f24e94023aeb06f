"""REST endpoints for calls: list your calls, start one, read one."""

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from .models import Call
from .selectors import call_history_for
from .serializers import CallCreateSerializer, CallSerializer
from .services import CallError, call_start


class CallListCreateApi(ListAPIView):
    serializer_class = CallSerializer

    def get_queryset(self):
        return call_history_for(user=self.request.user)

    @extend_schema(request=CallCreateSerializer, responses={201: CallSerializer})
    def post(self, request: Request) -> Response:
        ser = CallCreateSerializer(data=request.data, context={"request": request})
        ser.is_valid(raise_exception=True)
        try:
            call = call_start(caller=request.user, callee=ser.validated_data["callee"])
        except CallError as exc:
            return Response(
                {"code": exc.code, "detail": exc.message}, status=status.HTTP_400_BAD_REQUEST
            )
        return Response(
            CallSerializer(call_history_for(user=request.user).get(pk=call.pk)).data, status=201
        )


class CallDetailApi(RetrieveAPIView):
    serializer_class = CallSerializer
    lookup_url_kwarg = "call_id"

    def get_object(self):
        try:
            return call_history_for(user=self.request.user).get(pk=self.kwargs["call_id"])
        except Call.DoesNotExist as exc:  # other people's calls are simply not found
            raise Http404("No such call.") from exc
