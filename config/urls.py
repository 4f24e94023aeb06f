from csp.constants import SELF
from csp.decorators import csp_update
from django.contrib import admin
from django.http import HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from integrations.views import embed_call
from relays.views import network_test
from signaling.views import health

urlpatterns = [
    path("healthz", health, name="health"),
    # Pages that name no icon (Django admin, Swagger UI): browsers ask for /favicon.ico.
    path("favicon.ico", lambda request: HttpResponsePermanentRedirect(static("favicon.svg"))),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files (no CDN); the split
    # view serves Swagger's start-up script as a file, so the CSP needs no inline script.
    path(
        "api/v1/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema"),
        name="api-docs",
    ),
    # Redoc searches in a web worker it makes from a blob: URL.
    path(
        "api/v1/redoc/",
        csp_update({"worker-src": [SELF, "blob:"]})(
            SpectacularRedocView.as_view(url_name="api-schema")
        ),
        name="api-redoc",
    ),
    path("api/v1/", include("config.api")),
    path("embed/call/<uuid:call_id>", embed_call, name="embed-call"),
    path("network-test/", network_test, name="network-test"),
    path("", include("calls.urls")),
]
