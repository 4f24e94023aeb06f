"""REST endpoints of the relays app."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .serializers import IceServersSerializer
from .services import ice_servers_issue


class IceServersApi(APIView):
    """ICE servers for the signed-in caller: the best relays up right now, with fresh TURN
    credentials, in the shape `new RTCPeerConnection({iceServers})` takes."""

    @extend_schema(responses=IceServersSerializer)
    def get(self, request: Request) -> Response:
        payload = ice_servers_issue(user=request.user)
        return Response(payload, headers={"Cache-Control": "no-store"})
