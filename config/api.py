"""The REST API router: /api/v1/…"""

from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from calls.api import CallDetailApi, CallEndApi, CallInvitationApi, CallListCreateApi
from config.api_errors import error_body
from integrations.api import (
    EndUserApi,
    EndUsersApi,
    TicketApi,
    WebhookApi,
    WebhooksApi,
    WhoAmIApi,
)
from relays.api import (
    FleetPathsApi,
    IceServersApi,
    NetworkTestsApi,
    RelayApi,
    RelayDrainApi,
    RelayExplainApi,
    RelayFailureApi,
    RelayGatherApi,
    RelayProbeApi,
    RelaysApi,
)


@csrf_exempt  # nothing here changes anything; a CSRF refusal would hide the 404
def api_not_found(request, rest=""):
    """Anything under /api/v1/ that no endpoint matches (a malformed id included): the API's
    error shape, not Django's HTML page."""
    return JsonResponse(error_body("not_found", "No such endpoint or resource."), status=404)


urlpatterns = [
    path("whoami/", WhoAmIApi.as_view(), name="api-whoami"),
    path("users/", EndUsersApi.as_view(), name="api-users"),
    path("tickets/", TicketApi.as_view(), name="api-tickets"),
    path("webhooks/", WebhooksApi.as_view(), name="api-webhooks"),
    path("webhooks/<int:webhook_id>/", WebhookApi.as_view(), name="api-webhook"),
    path("users/<str:external_id>/", EndUserApi.as_view(), name="api-user"),
    path("ice-servers/", IceServersApi.as_view(), name="api-ice-servers"),
    path("network-tests/", NetworkTestsApi.as_view(), name="api-network-tests"),
    path("fleet/paths/", FleetPathsApi.as_view(), name="api-fleet-paths"),
    path("relays/", RelaysApi.as_view(), name="api-relays"),
    path("relays/explain/", RelayExplainApi.as_view(), name="api-relays-explain"),
    path("relays/failures/", RelayFailureApi.as_view(), name="api-relay-failures"),
    path("relays/gather/", RelayGatherApi.as_view(), name="api-relay-gather"),
    path("relays/<slug:name>/", RelayApi.as_view(), name="api-relay"),
    path("relays/<slug:name>/probe/", RelayProbeApi.as_view(), name="api-relay-probe"),
    path("relays/<slug:name>/drain/", RelayDrainApi.as_view(), name="api-relay-drain"),
    path("calls/", CallListCreateApi.as_view(), name="api-calls"),
    path("calls/<uuid:call_id>/", CallDetailApi.as_view(), name="api-call-detail"),
    path("calls/<uuid:call_id>/end/", CallEndApi.as_view(), name="api-call-end"),
    path(
        "calls/<uuid:call_id>/invitations/",
        CallInvitationApi.as_view(),
        name="api-call-invitations",
    ),
    # Last: whatever the endpoints above don't match, line breaks included (`.` stops at one,
    # and `$` matches before a trailing one).
    re_path(r"^(?P<rest>[\s\S]*)\Z", api_not_found),
]
